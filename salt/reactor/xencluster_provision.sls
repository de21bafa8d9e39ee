{#-
  Reactor for automatic provisioning: maps the event xencluster/guest/provision to the
  orchestration salt://xencluster/orchestrate/provision.sls (which runs
  `salt-run xencluster.provision <guest>`). Wire it in the master config
  (salt/xencluster/files/master.d/xencluster-provision.conf):

    reactor:
      - 'xencluster/guest/provision':
        - salt://reactor/xencluster_provision.sls
    xencluster_provision_allow:      # minion ids (globs) that may ask
      - node1
      - node2

  Ask from an allowed minion, or from the master:

    salt-call event.send xencluster/guest/provision '{"guest": "web2"}'
    salt-run event.send xencluster/guest/provision '{"guest": "web2"}'

  The payload is validated here: a mapping whose only key is "guest", a guest name
  (1-31 of a-z 0-9 '-'). A minion's event carries its id (set by the master); it must match
  xencluster_provision_allow. An event without an id was fired on the master. Everything
  else is refused and logged on the master (log level warning) and starts nothing; the
  runner checks the allow-list and the guest against the cluster model again.

  Caveat: Salt fires a minion's *batched* events as the minion wrote them, so a minion that
  is hostile can forge another id. The allow-list stops mistakes and misconfigured minions;
  a request can only name a guest the pillar already defines, and provisioning never
  destroys anything (deprovision has no event).
-#}
{%- set from_minion = data is mapping and data.get("id") is string %}
{%- set sender = data.get("id") if from_minion else none %}
{%- set payload = (data.get("data") if from_minion else data) if data is mapping else none %}
{%- set problems = [] %}
{%- if tag != "xencluster/guest/provision" %}
{%-   do problems.append("unexpected tag " ~ (tag | string | truncate(80, true))) %}
{%- endif %}
{%- set guest = payload.get("guest") if payload is mapping else none %}
{%- if payload is not mapping %}
{%-   do problems.append("the payload is not a mapping") %}
{%- else %}
{%-   set extra = [] %}
{%-   for key in payload %}
{%-     if key != "guest" and not (key is string and key.startswith("_")) %}{% do extra.append(key | string) %}{% endif %}
{%-   endfor %}
{%-   if extra %}{% do problems.append("unexpected key(s) " ~ (extra | join(", ") | truncate(120, true))) %}{% endif %}
{%- endif %}
{%- set name_ok = guest is string and (guest | regex_match("^([a-z0-9][a-z0-9-]{0,30})$")) is not none %}
{%- if not name_ok %}
{%-   do problems.append("guest must be a guest name (1-31 of a-z 0-9 '-'): " ~ (guest | string | truncate(80, true))) %}
{%- endif %}
{%- set allow = opts.get("xencluster_provision_allow") or [] %}
{%- if allow is string %}{% set allow = [allow] %}{% endif %}
{%- if from_minion %}
{%-   set allowed = [] %}
{%-   for pattern in allow if pattern is string %}
{#-     the glob as a regex (fnmatch's rules: * ? [seq] [!seq]), anchored at both ends #}
{%-     set ns = namespace(rx="^", cls=false, opened=false) %}
{%-     for ch in pattern %}
{%-       if ns.cls %}
{%-         set ns.rx = ns.rx ~ ("^" if ns.opened and ch == "!" else ("\\" ~ ch if ch in "\\^" else ch)) %}
{%-         set ns.cls, ns.opened = ch != "]" or ns.opened, false %}
{%-       elif ch == "*" %}{% set ns.rx = ns.rx ~ ".*" %}
{%-       elif ch == "?" %}{% set ns.rx = ns.rx ~ "." %}
{%-       elif ch == "[" %}{% set ns.rx, ns.cls, ns.opened = ns.rx ~ "[", true, true %}
{%-       else %}{% set ns.rx = ns.rx ~ (ch | regex_escape) %}
{%-       endif %}
{%-     endfor %}
{%-     if not ns.cls and (sender | regex_match(ns.rx ~ "$")) is not none %}{% do allowed.append(pattern) %}{% endif %}
{%-   endfor %}
{%-   if not allowed %}
{%-     do problems.append("minion " ~ (sender | truncate(80, true)) ~ " is not allowed to ask (master config xencluster_provision_allow)") %}
{%-   endif %}
{%- endif %}
{%- if problems %}
xencluster-provision-refused:
  runner.salt.cmd:
    - args:
      - fun: log.warning
      - message: {{ ("xencluster: provision request refused (from " ~ (sender or "the master") ~ "): "
                    ~ problems | join("; ")) | truncate(1000, true) | tojson }}
{%- else %}
xencluster-provision-{{ guest }}:
  runner.state.orchestrate:
    - args:
      - mods: xencluster.orchestrate.provision
      - pillar: {{ {"xencluster_provision": {"guest": guest, "requested_by": sender}} | tojson }}
{%- endif %}
