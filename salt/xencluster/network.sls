# xencluster dom0 network: bonds, one bridge per service VLAN, the SAN on its own interface;
# systemd-networkd files /etc/systemd/network/40-xencluster-* (xencluster_net). A change that
# touches the management link is refused unless pillar xencluster_dom0:network_force is true,
# e.g. salt node1 state.apply xencluster.network pillar='{"xencluster_dom0": {"network_force": true}}'
{%- from "xencluster/map.jinja" import dom0 with context %}

xencluster-network:
  xencluster_net.managed:
    - backend: {{ dom0.network_backend|json }}
    - force: {{ dom0.network_force|json }}
