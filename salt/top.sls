# The dom0s of a xencluster are the minions that get the cluster model (pillar `xencluster`):
# give that pillar to the dom0s only (see pillar/top.sls). Each of them gets the whole dom0
# formula; its map.jinja validates the model first, so a bad pillar stops the highstate of every
# dom0 with the key paths of every problem before any state runs.
{%- if salt['pillar.get']('xencluster', None) is not none %}
base:
  {{ grains['id']|json }}:
    - xencluster
{%- else %}
base: {}
{%- endif %}
