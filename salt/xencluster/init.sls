# xencluster dom0 formula: everything a dom0 of the cluster needs, from the cluster model in
# pillar (xencluster) and the host options in pillar (xencluster_dom0; see map.jinja).
#
#   dom0      packages, Xen settings (no guest starts by itself), xenconsoled logging, the
#             connector of the stream migration transport
#   hygiene   dom0 never touches guest data: LVM global_filter, no md auto-assembly (udev
#             and initramfs), kernel modules
#   storage   LIO restored at boot, iscsid config and initiator name, stable leg paths,
#             the node's VGs, and every disk leg of its pairs (LV, export, import, path)
#   network   bonds, service VLAN bridges and the SAN (systemd-networkd); refuses changes
#             that touch the management link unless xencluster_dom0:network_force is true
#   guests    guest configs; the guests pinned to this node started after a live cluster check
include:
  - xencluster.dom0
  - xencluster.hygiene
  - xencluster.storage
  - xencluster.network
  - xencluster.guests
