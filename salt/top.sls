# The dom0s of a xencluster are the minions that get the cluster model (pillar `xencluster`):
# give that pillar to the dom0s only (see pillar/top.sls). Each of them gets the whole dom0
# formula; its map.jinja validates the model first, so a bad pillar stops the highstate of every
# dom0 with the key paths of every problem before any state runs. A guest minion made by
# `salt-run xencluster.provision` (grain xencluster:role = guest) gets the guest baseline.
{%- if salt['pillar.get']('xencluster', None) is not none %}
base:
  {{ grains['id']|json }}:
    - xencluster
{%- elif salt['grains.get']('xencluster:role') == 'guest' %}
base:
  {{ grains['id']|json }}:
    - xencluster.guest
{%- else %}
base: {}
{%- endif %}
