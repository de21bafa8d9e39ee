# xencluster dom0 storage: LIO restored at boot, the iSCSI initiator, stable leg paths.
{%- from "xencluster/map.jinja" import xc with context %}

include:
  - xencluster.dom0

# targetctl restore of /etc/rtslib-fb-target/saveconfig.json at boot (NOTES.md 9). Enabled
# only, never started or restarted here: a start would replace the running LIO config.
xencluster-lio-restore-at-boot:
  service.enabled:
    - name: rtslib-fb-targetctl
    - require:
      - pkg: xencluster-packages

# This node's initiator IQN from the model (the IQN its peers' LIO ACLs allow).
xencluster-iscsi-initiatorname:
  file.managed:
    - name: /etc/iscsi/initiatorname.iscsi
    - user: root
    - group: root
    - mode: "0600"
    - contents: "InitiatorName={{ xc.initiator }}"
    - require:
      - pkg: xencluster-packages

# Node records created from now on log in at boot (open-iscsi.service), so the imported legs
# and their stable paths come back after a restart.
xencluster-iscsid-node-startup:
  file.replace:
    - name: /etc/iscsi/iscsid.conf
    - pattern: '^node\.startup\s*=.*$'
    - repl: 'node.startup = automatic'
    - append_if_not_found: True
    - backup: False
    - require:
      - pkg: xencluster-packages

xencluster-iscsid-enabled:
  service.enabled:
    - name: iscsid
    - require:
      - pkg: xencluster-packages

# iscsid reads the initiator name when it starts: restart it only when the name changed.
xencluster-iscsid:
  service.running:
    - name: iscsid
    - require:
      - service: xencluster-iscsid-enabled
    - watch:
      - file: xencluster-iscsi-initiatorname

xencluster-open-iscsi-enabled:
  service.enabled:
    - name: open-iscsi
    - require:
      - pkg: xencluster-packages

# /etc/udev/rules.d/61-xencluster-legs.rules: /dev/xencluster/<guest>.<disk>.<node>
xencluster-udev-leg-rules:
  xencluster_disk.rules_installed:
    - require:
      - pkg: xencluster-packages
