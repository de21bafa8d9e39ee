{#-
  Reactor for xencluster alerts: routes each xencluster/alert/<code> event,
  fired by `salt-run xencluster.monitor` (see
  salt/xencluster/files/master.d/xencluster-monitor.conf), to the master's log
  at the alert's own level (runner salt.cmd -> log.critical / log.error /
  log.warning), e.g.

    [CRITICAL] xencluster alert ECLUSTERDOUBLERUN (critical): DOUBLE RUN: guest web1 is running on node1, node2 ...

  The event data is not trusted: any minion can fire an event to the master.
  Only an event whose data names the code of its own tag and one of the three
  severities renders anything, and each value goes into the YAML below through
  |tojson, so quotes, newlines, YAML or Jinja syntax in it stay one string.
-#}
{%- set levels = {"critical": "log.critical", "error": "log.error", "warning": "log.warning"} %}
{%- set code = data.get("code") if data is mapping else none %}
{%- set severity = data.get("severity") if data is mapping else none %}
{%- if code is string and code.isalnum() and tag == "xencluster/alert/" ~ code
      and severity is string and severity in levels %}
{%-   set where = [] %}
{%-   for key in ("node", "guest", "leg") %}
{%-     if data.get(key) is string %}{% do where.append(key ~ "=" ~ data[key]) %}{% endif %}
{%-   endfor %}
{%-   set text = "xencluster alert " ~ code ~ " (" ~ severity ~ "): " ~ (data.get("message") | string)
                 ~ (" [" ~ where | join(" ") ~ "]" if where else "") %}
xencluster-alert-log:
  runner.salt.cmd:
    - args:
      - fun: {{ levels[severity] | tojson }}
      - message: {{ text | truncate(2000, true) | tojson }}
{#-
  Alternative: run a command for each alert (as the master's user), with its
  arguments as a list and no shell, e.g. a pager script:

xencluster-alert-page:
  runner.salt.cmd:
    - args:
      - fun: cmd.run
      - cmd: {{ ["/usr/local/bin/xencluster-page", code, severity, text | truncate(2000, true)] | tojson }}
      - python_shell: false
#}
{%- endif %}
