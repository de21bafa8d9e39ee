# xencluster dom0: packages, Xen settings, xenconsoled logging, the stream migration connector.
{%- from "xencluster/map.jinja" import dom0 with context %}

xencluster-packages:
  pkg.installed:
    - pkgs: {{ dom0.packages|json }}

# Nothing starts guests automatically (NOTES.md 12): a guest starts only after the check
# that it runs nowhere else. xendomains would start (or restore) guests at boot.
xencluster-xendomains-dead:
  service.dead:
    - name: xendomains
    - enable: False
    - require:
      - pkg: xencluster-packages

xencluster-xendomains-masked:
  service.masked:
    - name: xendomains
    - require:
      - service: xencluster-xendomains-dead

# xenconsoled does not create its log dir (NOTES.md 10).
xencluster-xen-console-log-dir:
  file.directory:
    - name: /var/log/xen/console
    - user: root
    - group: root
    - mode: "0750"
    - makedirs: True

# Guest consoles logged to /var/log/xen/console/guest-<name>.log, with the guest's timestamps.
xencluster-xenconsoled-args:
  file.replace:
    - name: /etc/default/xen
    - pattern: '^XENCONSOLED_ARGS=.*$'
    - repl: 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"'
    - append_if_not_found: True
    - backup: False
    - require:
      - pkg: xencluster-packages

# Debian starts xenconsoled from its xen init script (xen.service). Restarted only when the
# arguments change: its stop/start restarts xenconsoled and dom0's qemu disk backend (qdisk),
# never xenstored and never a guest; guests on LVs/LUNs (blkback) are not affected.
xencluster-xenconsoled:
  service.running:
    - name: xen
    - require:
      - file: xencluster-xen-console-log-dir
    - watch:
      - file: xencluster-xenconsoled-args

# The connector of the "stream" migration transport (xencluster_xl.migrate transport=stream):
# `xl migrate -s` runs it instead of ssh; it hands xl's stream to socat (in the packages), plain
# TCP to the one-shot listener xencluster_xl.stream_receive starts on the target's SAN address.
xencluster-xl-stream-connect:
  file.managed:
    - name: /usr/libexec/xencluster/xl-stream-connect
    - source: salt://xencluster/files/xl-stream-connect
    - user: root
    - group: root
    - mode: "0755"
    - makedirs: True
    - dir_mode: "0755"
    - require:
      - pkg: xencluster-packages
