# xencluster guest baseline: applied by the highstate of a guest minion that provisioning made
# (salt-run xencluster.provision writes its grain xencluster:role = guest; salt/top.sls maps it
# here). Your own guest states go next to it in your top file.
{%- set xc = grains.get('xencluster', {}) %}
xencluster-guest-motd:
  file.managed:
    - name: /etc/motd
    - user: root
    - group: root
    - mode: "0644"
    - contents: |
        {{ grains['id'] }}: a guest of xencluster cluster {{ xc.get('cluster', '?') }}.
        Its disks are md RAID1 pairs of legs on {{ xc.get('nodes', ['?']) | join(' and ') }}: cat /proc/mdstat.
        Managed by Salt (xencluster.guest).
