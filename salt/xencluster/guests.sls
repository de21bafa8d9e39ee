# xencluster dom0 guests: every guest this node may run is defined (/etc/xen/xencluster/<guest>.cfg,
# both legs of each disk at their stable paths); only the guests pinned to this node (`node:` in
# pillar) are started, each after a live check through the master that it runs nowhere else in
# the cluster (needs peer_run for xencluster.locate, see README). Nothing is stopped or moved.

include:
  - xencluster.dom0
  - xencluster.hygiene
  - xencluster.storage
  - xencluster.network

xencluster-guests:
  xencluster_guest.node_guests:
    - name: {{ grains['id']|json }}
    - require:
      - xencluster_leg: xencluster-legs
      - xencluster_net: xencluster-network
      - service: xencluster-xendomains-masked
      - service: xencluster-xenconsoled
      - kmod: xencluster-kmod-xen_blkback
      - kmod: xencluster-kmod-xen_netback
