# xencluster cluster model: an EXAMPLE of a real three-node cluster.
#
# Copy it, then change every name, address, device, MAC and - above all - every
# secret marked REPLACE-ME. Plain YAML (no Jinja). Check it before anything
# changes (every problem is reported at once, each line starting with its key
# path):
#
#     salt-call xencluster_model.validate
#     salt 'xen1*' xencluster_model.node_view xen1
#
# The schema is documented at the top of _modules/xencluster_model.py.
#
# Hardware assumed per node:
#   eno1            1G onboard       management (Salt, ssh), untagged
#   ens1f0, ens2f0  25G, two cards   bond0, LACP to a pair of MLAG switches:
#                                    service VLANs 10 (frontend) and 20 (backend)
#   ens1f1, ens2f1  25G, two cards   bond1, active-backup to two SAN switches:
#                                    the SAN, jumbo frames, no service VLAN on it
#   2 NVMe drives                    VG xcvg (guest disk legs), 2 PVs: stripes up to 2
#   xen3 only: 2 HDDs                VG backupvg (backup volumes)
#
# The SAN is kept apart from service traffic: xencluster refuses a SAN
# interface that is a bond link, a bond carrying VLANs or a VLAN parent.

xencluster:
  cluster:
    name: prod
    # Initiators are <iqn_base>:<node>, targets <iqn_base>:<guest>.<disk>.<node>.
    # iqn.YYYY-MM.<reversed domain you own>, lower case, at least two labels.
    iqn_base: iqn.2025-01.net.example.xen
    san_port: 3260
    # Seconds a leg's I/O waits for a lost session before it fails (md in the guest then
    # drops the leg). Default 20; keep it above the SAN's worst path failover time.
    replacement_timeout: 20
    # CHAP for every node, unless a node has its own `chap:` below. The
    # partner's initiator logs in with userid/password; with mutual_* the
    # target proves itself too. Secrets: 12-255 characters of
    # A-Z a-z 0-9 !#%+,./:=@^_~-  (RFC 3720 wants >= 96 bits; LIO and
    # open-iscsi hold up to 255). They are never shown by validate,
    # node_view, errors or logs. Keep the real ones out of git: e.g. Salt's
    # gpg renderer, or a pillar file only the master can read.
    chap:
      userid: xc-prod
      password: REPLACE-ME-chap-secret-1        # PLACEHOLDER: replace before use
      mutual_userid: xc-prod-target
      mutual_password: REPLACE-ME-chap-secret-2 # PLACEHOLDER: must differ from password

  nodes:
    xen1:
      minion: xen1.example.net         # Salt minion id (default: the node name)
      mgmt_interface: eno1             # network changes touching it need force
      san:
        - {interface: bond1, address: 10.20.0.1/24}
      bonds:
        bond0:
          mode: 802.3ad                # LACP; needs MLAG on the switch pair
          links: [ens1f0, ens2f0]      # one port on each card
          lacp_rate: fast              # default fast
          xmit_hash_policy: layer3+4   # default layer2+3
          mtu: 1500
        bond1:
          mode: active-backup          # two independent SAN switches, no MLAG
          links: [ens1f1, ens2f1]
          primary: ens1f1
          mtu: 9000                    # jumbo frames on the SAN
      vlans:                           # VLAN id (1-4094) -> bridge for guests
        10: {bridge: br-front, parent: bond0}
        20: {bridge: br-back, parent: bond0}
      vgs:
        xcvg: {pvs: [/dev/nvme0n1, /dev/nvme1n1]}

    xen2:
      minion: xen2.example.net
      mgmt_interface: eno1
      san:
        - {interface: bond1, address: 10.20.0.2/24}
      bonds:
        bond0: {mode: 802.3ad, links: [ens1f0, ens2f0], xmit_hash_policy: layer3+4, mtu: 1500}
        bond1: {mode: active-backup, links: [ens1f1, ens2f1], primary: ens1f1, mtu: 9000}
      vlans:
        10: {bridge: br-front, parent: bond0}
        20: {bridge: br-back, parent: bond0}
      vgs:
        xcvg: {pvs: [/dev/nvme0n1, /dev/nvme1n1]}

    xen3:
      minion: xen3.example.net
      mgmt_interface: eno1
      san:
        - {interface: bond1, address: 10.20.0.3/24}
      bonds:
        bond0: {mode: 802.3ad, links: [ens1f0, ens2f0], xmit_hash_policy: layer3+4, mtu: 1500}
        bond1: {mode: active-backup, links: [ens1f1, ens2f1], primary: ens1f1, mtu: 9000}
      vlans:
        10: {bridge: br-front, parent: bond0}
        20: {bridge: br-back, parent: bond0}
      vgs:
        xcvg: {pvs: [/dev/nvme0n1, /dev/nvme1n1]}
        backupvg: {pvs: [/dev/sda, /dev/sdb]}
      # This node's own initiator credentials (it logs in to xen1 and xen2 with
      # them; they are set on the ACLs xen1 and xen2 make for it).
      chap:
        userid: xc-prod-xen3
        password: REPLACE-ME-chap-secret-3      # PLACEHOLDER: replace before use

  guests:
    # A guest runs on ONE node of its pair at a time (nothing starts it by
    # itself). Each disk has one LV leg on each node of the pair, visible on
    # both as /dev/xencluster/<guest>.<disk>.<node>; the guest mirrors them
    # with md RAID1. All disks of a guest use the same pair.
    web1:
      type: pvh                        # pvh (default) | pv | hvm
      node: xen1                       # home node; must be in the pair
      nodes: [xen1, xen2]              # the pair, default for every disk
      vg: xcvg                         # default VG of every disk
      memory: 2G                       # >= 32M; a bare number would be bytes
      vcpus: 2
      sched: {weight: 512, cap: 0}     # credit2 weight 1-65535, cap % of one CPU (0 = none)
      kernel: /srv/xen/kernels/vmlinuz-6.1   # on every node of the pair
      ramdisk: /srv/xen/kernels/initrd.img-6.1
      extra: "root=/dev/md0 ro console=hvc0"
      interfaces:                      # eth0, eth1, ... in this order
        - {vlan: 10, mac: "00:16:3e:10:00:01"}   # unique in the cluster, unicast
        - {vlan: 20, mac: "00:16:3e:10:00:02"}
      backup: nas3                     # the target below (also the default)
      disks:                           # xvda, xvdb, ... in this order
        - {name: root, size: 20G, filesystem: ext4}
        - {name: swap, size: 2G, filesystem: swap}        # swap is never backed up

    db1:
      type: pvh
      node: xen2
      nodes: [xen2, xen3]
      vg: xcvg
      memory: 8G
      vcpus: 4
      sched: {weight: 1024, cap: 300}  # at most 3 CPUs' worth
      bootloader: pygrub               # kernel from the guest's own /boot
      interfaces:
        - {vlan: 20, mac: "00:16:3e:10:01:01"}
      disks:
        - {name: root, size: 20G, filesystem: ext4}
        - name: data
          size: 200G
          stripes: 2                   # across both NVMe drives on each node
          stripe_size: 64k             # power of two >= 4k, only with stripes >= 2
          filesystem: xfs

    win1:
      type: hvm                        # boots from its disk: no kernel/bootloader
      nodes: [xen1, xen3]
      memory: 4G
      vcpus: 2
      interfaces:
        - {vlan: 10, mac: "00:16:3e:10:02:01"}
      backup: false                    # opt out of backups
      disks:
        - {name: system, size: 60G, vg: xcvg, filesystem: none}

    legacy1:
      type: pv                         # PV: cannot be live-migrated in Debian's Xen
      node: xen3
      memory: 512M
      bootloader: pygrub
      interfaces:
        - {vlan: 10, mac: "00:16:3e:10:03:01"}
      disks:
        - {name: root, size: 8G, nodes: [xen3, xen1], vg: xcvg, filesystem: ext3}

    app1:
      # Installed by `salt-run xencluster.provision app1`: it creates the legs,
      # builds the RAID1 and the root filesystem on the FIRST disk from the
      # dom0, installs the OS, writes the guest's identity and salt-minion
      # config, starts it and waits for its minion. Until then the highstate
      # defines app1 but does not start it (its root leg has no LVM tag
      # xencluster.provisioned yet).
      type: pvh                        # provisioning: pv or pvh, with kernel AND ramdisk
      node: xen2                       # (no bootloader: nothing in the guest for pygrub; no hvm)
      nodes: [xen2, xen3]
      vg: xcvg
      memory: 1G
      kernel: /srv/xen/kernels/vmlinuz-6.1          # the ramdisk must assemble the md RAID1 root
      ramdisk: /srv/xen/kernels/initrd.img-6.1
      extra: "root=/dev/md0 ro console=hvc0"
      interfaces:
        - {vlan: 20, mac: "00:16:3e:10:04:01"}      # eth0: provision.address/gateway/dns are for it
        # eth1 on a plain dom0 bridge instead of a service VLAN: `bridge:` names a
        # bridge that xencluster does not make (e.g. your own networkd files for a
        # lab network). It must exist on xen2 and xen3: the model cannot check that.
        - {bridge: br-lab, mac: "00:16:3e:10:04:02"}
      provision:
        # The OS: a tar of a root filesystem on the dom0 that provisions (.tar,
        # .tar.gz, .tgz, .tar.xz or .tar.zst; absolute path, no '..') ...
        image: /srv/xencluster/images/debian12-guest.tar.zst
        # ... or, instead of image, debootstrap (mirror default
        # http://deb.debian.org/debian, variant minbase (default) or buildd,
        # include: up to 64 Debian packages):
        # debootstrap: {suite: bookworm, mirror: "http://deb.debian.org/debian",
        #               variant: minbase, include: [mdadm, python3]}
        address: 10.30.20.41/24        # static address of eth0 (with prefix); omit for DHCP
        gateway: 10.30.20.1            # optional, only with address, same IP family
        dns: [10.30.20.2, 10.30.20.3]  # optional, 1-3 IP addresses
        master: salt.example.net       # required: the salt master as app1 reaches it (IP or host name)
        highstate: true                # default true: app1's highstate once its minion is up
        final_backup: true             # default false: deprovision backs app1 up first (nas3, the default)
      disks:                           # the first disk is the root: ext2, ext3, ext4 or xfs
        - {name: root, size: 10G, filesystem: ext4}
        - {name: data, size: 20G, filesystem: xfs}

  backup:
    targets:
      nas3: {node: xen3, vg: backupvg} # backup volumes live in xen3's backupvg
    default: nas3                      # guests without `backup:` go there
    retention: {daily: 7, weekly: 4, monthly: 6}   # how many of each to keep
