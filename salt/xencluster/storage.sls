# xencluster dom0 storage: LIO restored at boot, the iSCSI initiator, stable leg paths, this
# node's volume groups and every disk leg of its pairs (LV, LIO export, iSCSI import, path).
{%- from "xencluster/map.jinja" import xc with context %}

include:
  - xencluster.dom0
  - xencluster.hygiene

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

# This node's VGs from the model. Created (or given a new PV) only on devices that carry no
# signature at all; a PV with a filesystem, a partition table or another VG is refused, never
# wiped. PVs are never removed from a VG.
{%- for vg, spec in xc.vgs|dictsort %}

xencluster-vg-{{ vg }}:
  xencluster_lvm.vg_present:
    - name: {{ vg|json }}
    - pvs: {{ spec.pvs|json }}
    - require:
      - file: xencluster-lvm-global-filter
{%- endfor %}

# Every leg of this node's pairs: its own legs as LVs exported to the partner only, the
# partner's legs imported, all at /dev/xencluster/<guest>.<disk>.<node>. One read of the host
# whatever the number of legs. Both dom0s of a pair run this at the same time in a highstate:
# a login waits (import_wait) until the partner has exported its leg.
xencluster-legs:
  xencluster_leg.node_legs:
    - name: {{ grains['id']|json }}
    - import_wait: 900
    - require:
      - xencluster_disk: xencluster-udev-leg-rules
      - service: xencluster-iscsid
      - file: xencluster-iscsid-node-startup
      - kmod: xencluster-kmods
{%- for vg in xc.vgs|sort %}
      - xencluster_lvm: xencluster-vg-{{ vg }}
{%- endfor %}
