{#-
  Orchestration of one provisioning: `salt-run xencluster.provision <guest>` (see its docs).

    salt-run state.orchestrate xencluster.orchestrate.provision pillar='{"xencluster_provision": {"guest": "web2"}}'

  The reactor salt://reactor/xencluster_provision.sls runs it for the event
  xencluster/guest/provision, with requested_by = the asking minion (checked by the
  runner against master config xencluster_provision_allow).
-#}
{%- set request = pillar.get("xencluster_provision") or {} %}
xencluster-provision:
  salt.runner:
    - name: xencluster.provision
    - guest: {{ request.get("guest") | tojson }}
{%- if request.get("requested_by") %}
    - requested_by: {{ request.get("requested_by") | tojson }}
{%- endif %}
