# xencluster cluster model: the two-node QEMU lab (`make demo`, `python -m lab up`).
#
# Plain YAML (no Jinja). Check it before anything changes:
#
#     salt-call xencluster_model.validate            # the whole model, normalised
#     salt node1 xencluster_model.node_view node1    # what node1 will do
#
# Every problem is reported at once, one line each, starting with the key path
# (e.g. "xencluster.guests.web1.disks.root.nodes: both legs on node1").
# The schema is documented at the top of _modules/xencluster_model.py;
# pillar/xencluster/example-3node.sls shows a real cluster with bonds,
# striping, backups and CHAP.
#
# What the lab gives each node (lab/config.py): eth0 = management (QEMU slirp,
# 10.0.2.15), eth1 = a private SAN segment shared only by the nodes
# (192.168.100.<N>/24), eth2 and eth3 = two service links on one service
# segment (a hub that passes 802.1Q tags; `python -m lab link nodeN 2 down`
# pulls a cable), two empty data disks /dev/vdb and /dev/vdc, and the probe
# guest's initramfs /srv/domu/probe-initrd.gz (lab/files/domu/probe-init: it
# mirrors xvda+xvdb with md RAID1, prints "HB <n> md=... net=ok|fail" every
# 2 s and pings probe.peer from probe.ip, both on the kernel command line).
#
# The guests prove the network: web1 (node1) and db1 (node2) share VLAN 10
# and reach each other across the nodes; app1 (node1, VLAN 20) has an
# address in the same IP subnet but must NOT reach db1.

xencluster:
  cluster:
    name: lab
    # IQN prefix of every initiator (<iqn_base>:<node>) and target
    # (<iqn_base>:<guest>.<disk>.<node>). rtslib needs at least two labels
    # after the date: iqn.2025-01.lab would be refused.
    iqn_base: iqn.2025-01.lab.xen
    san_port: 3260
    # Seconds an imported leg's I/O waits for a lost session before it fails, so md in the
    # guest drops that leg and goes on degraded (open-iscsi's own default: 120 s of frozen
    # guest writes when a node dies). Set on every leg's node record and live session.
    replacement_timeout: 20
    # No CHAP in the lab: the SAN segment is private to the nodes. LIO still
    # only lets in the one partner initiator each leg is exported to.

  nodes:
    node1:
      # minion: node1                  # Salt minion id; defaults to the node name
      # initiator: iqn.2025-01.lab.xen:node1   # default <iqn_base>:<node>
      mgmt_interface: eth0            # the link Salt reaches the node on
      san:                            # SAN paths; their IPs are the iSCSI portals
        - interface: eth1
          address: 192.168.100.1/24
      vgs:
        xcvg:                         # one VG on both data disks: up to 2 stripes
          pvs: [/dev/vdb, /dev/vdc]
      bonds:
        # Both service links in one bond. active-backup: the lab's service
        # segment is a hub, which has no LACP (802.3ad needs a switch that
        # speaks it; the renderer supports it, see example-3node.sls).
        bond0: {mode: active-backup, links: [eth2, eth3], primary: eth2, miimon: 100}
      vlans:
        # Service VLANs, one bridge each for guest interfaces (`parent`, not
        # `on`: YAML reads an unquoted on as true).
        10: {bridge: br-svc10, parent: bond0}
        20: {bridge: br-svc20, parent: bond0}

    node2:
      mgmt_interface: eth0
      san:
        - interface: eth1
          address: 192.168.100.2/24
      vgs:
        xcvg:
          pvs: [/dev/vdb, /dev/vdc]
      bonds:
        bond0: {mode: active-backup, links: [eth2, eth3], primary: eth2, miimon: 100}
      vlans:
        10: {bridge: br-svc10, parent: bond0}
        20: {bridge: br-svc20, parent: bond0}

  guests:
    # Each disk is a pair of LVs, one on each node of `nodes`, named
    # <guest>.<disk>.<node> (e.g. web1.root.node1) and seen on BOTH nodes as
    # /dev/xencluster/<guest>.<disk>.<node>; the guest mirrors the two with md
    # RAID1 and can run on either node. It never starts by itself.
    web1:
      type: pvh
      node: node1                     # home node: where it normally runs
      memory: 128M                    # 96M boots alone but crashed in the lab with its peers; 80M panics
      vcpus: 1
      sched: {weight: 256, cap: 0}    # credit2; cap 0 = no cap
      kernel: /vmlinuz                # the dom0's own kernel (Debian's symlink)
      ramdisk: /srv/domu/probe-initrd.gz
      extra: "console=hvc0 probe.ip=10.10.0.11/24 probe.peer=10.10.0.12"
      interfaces:
        - {vlan: 10, mac: "00:16:3e:00:01:01"}
      disks:                          # in order: root = xvda (node1 leg) + xvdb (node2 leg), data = xvdc + xvdd
        - name: root
          size: 256M
          nodes: [node1, node2]
          vg: xcvg
          filesystem: ext4
        - name: data
          size: 512M
          nodes: [node1, node2]
          vg: xcvg
          stripes: 2                  # across /dev/vdb and /dev/vdc on each node
          stripe_size: 64k
          filesystem: xfs

    db1:
      type: pvh
      node: node2
      memory: 128M
      vcpus: 1
      kernel: /vmlinuz
      ramdisk: /srv/domu/probe-initrd.gz
      extra: "console=hvc0 probe.ip=10.10.0.12/24 probe.peer=10.10.0.11"
      interfaces:
        - {vlan: 10, mac: "00:16:3e:00:02:01"}
      disks:
        - name: root
          size: 256M
          nodes: [node2, node1]       # order does not matter
          vg: xcvg
          filesystem: ext4

    app1:                             # VLAN 20: must not reach db1 on VLAN 10
      type: pvh
      node: node1
      memory: 128M
      vcpus: 1
      kernel: /vmlinuz
      ramdisk: /srv/domu/probe-initrd.gz
      extra: "console=hvc0 probe.ip=10.10.0.13/24 probe.peer=10.10.0.12"
      interfaces:
        - {vlan: 20, mac: "00:16:3e:00:03:01"}
      disks:
        - {name: root, size: 64M, nodes: [node1, node2], vg: xcvg, filesystem: none}

    svc1:                             # provisioned, not hand-made: salt-run xencluster.provision svc1,
      type: pvh                       # or the event xencluster/guest/provision {"guest": "svc1"}
      node: node1                     # the highstate starts it only once provisioned (LV tag)
      memory: 384M                    # systemd + salt-minion
      vcpus: 1
      # Below dom0 (credit2 weight 256): a lab node has one emulated CPU, and a booting Debian
      # guest at an equal weight starved node1's minion until it missed the master's jobs.
      sched: {weight: 64, cap: 0}
      kernel: /vmlinuz
      ramdisk: /srv/xencluster/images/guest-initrd.gz   # assembles the root RAID1 from xvda + xvdb
      extra: "console=hvc0"
      interfaces:
        # the lab's guest bridge: each dom0 relays 10.99.0.1:4505/4506 to the salt master
        - {bridge: xcguests, mac: "00:16:3e:99:00:20"}
      disks:
        - {name: root, size: 1G, nodes: [node1, node2], vg: xcvg, filesystem: ext4}
      provision:
        image: /srv/xencluster/images/debian12-guest.tar.zst   # the lab image's golden guest image
        address: 10.99.0.20/24
        master: 10.99.0.1

  # No backup section: the lab has no room for backup volumes.
