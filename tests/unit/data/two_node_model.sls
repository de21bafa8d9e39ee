# A frozen copy of pillar/xencluster/lab.sls as of commit 0ae3844 (one service link, web1 + db1):
# unit tests of the states and renderers use it so that editing the shipped lab pillar does not
# move their expectations. The shipped pillars are validated by test_xencluster_model.py.
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
# (192.168.100.<N>/24), two empty data disks /dev/vdb and /dev/vdc, and the
# probe guest's initramfs /srv/domu/probe-initrd.gz.

xencluster:
  cluster:
    name: lab
    # IQN prefix of every initiator (<iqn_base>:<node>) and target
    # (<iqn_base>:<guest>.<disk>.<node>). rtslib needs at least two labels
    # after the date: iqn.2025-01.lab would be refused.
    iqn_base: iqn.2025-01.lab.xen
    san_port: 3260
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
      vlans:
        # Service VLAN 10, bridged for guest interfaces (`parent`, not `on`:
        # YAML reads an unquoted on as true). The lab's third NIC
        # (eth2, "3.. = service links" in lab/config.py) carries it; there is
        # only one such link in the lab, so no bond.
        10: {bridge: br-svc10, parent: eth2}

    node2:
      mgmt_interface: eth0
      san:
        - interface: eth1
          address: 192.168.100.2/24
      vgs:
        xcvg:
          pvs: [/dev/vdb, /dev/vdc]
      vlans:
        10: {bridge: br-svc10, parent: eth2}

  guests:
    # Each disk is a pair of LVs, one on each node of `nodes`, named
    # <guest>.<disk>.<node> (e.g. web1.root.node1) and seen on BOTH nodes as
    # /dev/xencluster/<guest>.<disk>.<node>; the guest mirrors the two with md
    # RAID1 and can run on either node. It never starts by itself.
    web1:
      type: pvh
      node: node1                     # home node: where it normally runs
      memory: 128M                    # the dom0 kernel + probe initrd need > 64M
      vcpus: 1
      sched: {weight: 256, cap: 0}    # credit2; cap 0 = no cap
      kernel: /vmlinuz                # the dom0's own kernel (Debian's symlink)
      ramdisk: /srv/domu/probe-initrd.gz
      extra: "console=hvc0"
      interfaces:
        - {vlan: 10, mac: "00:16:3e:00:01:01"}
      disks:                          # ordered: root is xvda, data is xvdb
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
      extra: "console=hvc0"
      interfaces:
        - {vlan: 10, mac: "00:16:3e:00:02:01"}
      disks:
        - name: root
          size: 256M
          nodes: [node2, node1]       # order does not matter
          vg: xcvg
          filesystem: ext4

  # No backup section: the lab has no room for backup volumes.
