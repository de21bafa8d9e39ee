# xencluster dom0 hygiene (NOTES.md 8): dom0 must never touch guest data. A guest's disk legs
# carry its md RAID1 superblocks (and maybe its own LVM); dom0 auto-assembling them stops LIO
# from opening the LV. So: LVM scans only this node's PVs, md never auto-assembles (udev and
# initramfs), and the kernel modules the cluster needs are loaded at boot.
{%- from "xencluster/map.jinja" import dom0, lvm_filter with context %}

include:
  - xencluster.dom0

# Accept exactly the PVs of this node's VGs in the model (plus xencluster_dom0:lvm_accept),
# reject everything else: iSCSI LUNs (sd*), md devices, LVs (dm-*, so a guest's own PVs inside
# a leg) and any other disk. lvmlocal.conf overrides lvm.conf; the initramfs copies /etc/lvm.
xencluster-lvm-global-filter:
  file.managed:
    - name: /etc/lvm/lvmlocal.conf
    - user: root
    - group: root
    - mode: "0644"
    - require:
      - pkg: xencluster-packages
    - contents: |
        # Managed by Salt (xencluster.hygiene): edits are overwritten.
        # dom0 scans only the PVs of this node's VGs in the xencluster model (and
        # xencluster_dom0:lvm_accept); iSCSI LUNs, md devices, LVs and every other
        # device are rejected, so guest metadata is never seen (NOTES.md 8).
        devices {
            global_filter = [ {{ lvm_filter|join(', ') }} ]
        }

# Masks /lib/udev/rules.d/64-md-raid-assembly.rules: udev never runs mdadm --incremental.
# A regular file on purpose: mdadm's initramfs hook copies /etc/udev/rules.d/<name> only when
# it is a regular file (a link to /dev/null would leave the initramfs assembling arrays).
xencluster-md-udev-assembly-masked:
  file.managed:
    - name: /etc/udev/rules.d/64-md-raid-assembly.rules
    - user: root
    - group: root
    - mode: "0644"
    - contents: |
        # Managed by Salt (xencluster.hygiene). Deliberately without rules: this file masks
        # /lib/udev/rules.d/64-md-raid-assembly.rules, in dom0 and in its initramfs, so that
        # md arrays are never assembled automatically (guest RAID legs are guest data).

xencluster-md-udev-reload:
  module.run:
    - cmd.run_all:
      - cmd: [udevadm, control, --reload]
      - python_shell: False
    - onchanges:
      - file: xencluster-md-udev-assembly-masked

# Legacy switches of Debian's mdadm scripts (read by older mdadm packages; harmless in 4.2).
xencluster-mdadm-default:
  file.keyvalue:
    - name: /etc/default/mdadm
    - key_values:
        INITRDSTART: "'none'"
        AUTOSTART: "false"
    - separator: "="
    - append_if_not_found: True
    - require:
      - pkg: xencluster-packages

# AUTO -all: mdadm assembles only the arrays listed here (dom0's own, xencluster_dom0:md_arrays).
# The <ignore> line matches no array; it is here because mdadm's initramfs hook replaces a
# mdadm.conf without ARRAY lines by a fresh scan of every disk (which would list guest arrays
# and drop AUTO -all). With it, the initramfs gets this file as it is.
xencluster-mdadm-conf:
  file.managed:
    - name: /etc/mdadm/mdadm.conf
    - user: root
    - group: root
    - mode: "0644"
    - require:
      - pkg: xencluster-packages
    - contents: |
        # Managed by Salt (xencluster.hygiene): edits are overwritten.
        # dom0 assembles no md array automatically: guest RAID legs are guest data.
        # Run update-initramfs -u after changing this file (the formula does).
        HOMEHOST <system>
        MAILADDR root
        AUTO -all
        ARRAY <ignore> UUID=00000000:00000000:00000000:00000000
        {%- for line in dom0.md_arrays %}
        {{ line }}
        {%- endfor %}

# The initramfs carries /etc/lvm, mdadm.conf and the udev rules: rebuild it (every installed
# kernel) only when one of them changed. module.run with an argument list: no shell.
xencluster-initramfs:
  module.run:
    - cmd.run_all:
      - cmd: [update-initramfs, -u, -k, all]
      - python_shell: False
      - timeout: 900
    - onchanges:
      - file: xencluster-lvm-global-filter
      - file: xencluster-md-udev-assembly-masked
      - file: xencluster-mdadm-default
      - file: xencluster-mdadm-conf

# Xen backends, LIO target + iSCSI initiator, bonding, VLANs, bridges; persisted in
# /etc/modules-load.d/salt_managed.conf. Names as lsmod shows them (xen_blkback, not
# xen-blkback), or every run would look like a change. One state for all of them: one
# lsmod per highstate, not one per module (each costs seconds on a busy dom0).
xencluster-kmods:
  kmod.present:
    - mods:
      - xen_blkback
      - xen_netback
      - target_core_mod
      - target_core_iblock
      - iscsi_target_mod
      - iscsi_tcp
      - bonding
      - 8021q
      - bridge
    - persist: True
