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
    # Seconds the master's xencluster.locate waits for every dom0. In a highstate of the whole
    # cluster the other dom0s are busy with their own runs: the default 10 s can be too short.
    # Keep it well under 60 s: publish.runner's request to the master times out at 60 s.
    - check_timeout: 40
    - require:
      - xencluster_leg: xencluster-legs
      - xencluster_net: xencluster-network
      - service: xencluster-xendomains-masked
      - service: xencluster-xenconsoled
      - kmod: xencluster-kmods
