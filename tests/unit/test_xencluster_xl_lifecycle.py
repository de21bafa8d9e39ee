"""xencluster_xl lifecycle: render_config, create, shutdown, destroy, migrate,
save, restore, mem_set, vcpu_set, sched_credit2.

An idle dom0 is the recording tests/recordings/xl/lab-node1-idle. A dom0 WITH
guests uses SYNTHETIC output (the minimal part of the synthetic data of
test_xencluster_xl_module.py, built from Xen 4.17's source, not captured):
web1 (pvh, domid 3), db1 (pv, domid 5) and web2--incoming (domid 9, in
``xl list`` only, so of unknown type).
"""

import json
import os
import stat

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_xl as xl

XL_IDLE = "lab-node1-idle"


# --- SYNTHETIC: copied (minimal part) from test_xencluster_xl_module.py -------
def _domain(domid, name, dtype, memkb, vcpus):
    return {
        "domid": domid,
        "config": {
            "c_info": {"type": dtype, "name": name},
            "b_info": {"max_vcpus": vcpus, "max_memkb": memkb, "target_memkb": memkb},
        },
    }


_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
_ROW = "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"
_DOM0_ROW = _ROW % ("Domain-0", 0, 2048, 2, "r", "-", "-", "-", "-", "-", 812.4)
_GUESTS = {
    "web1": (_domain(3, "web1", "pvh", 1048576, 2), _ROW % ("web1", 3, 1024, 2, "-", "b", "-", "-", "-", "-", 42.0)),
    "db1": (_domain(5, "db1", "pv", 4194304, 4), _ROW % ("db1", 5, 4096, 4, "r", "-", "-", "-", "-", "-", 1200.5)),
    "web2--incoming": (None, _ROW % ("web2--incoming", 9, 512, 1, "-", "-", "p", "-", "-", "-", 0.0)),
}


def _synthetic(run_all, names=tuple(_GUESTS)):
    """SYNTHETIC xl list -l / xl list showing the given guests."""
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = json.dumps([_GUESTS[n][0] for n in names if _GUESTS[n][0]])
    run_all.outputs[tuple(xl.XL_LIST)] = "\n".join([_HEADER, _DOM0_ROW] + [_GUESTS[n][1] for n in names]) + "\n"


# -------------------------------------------------------------------------------

INJECTIONS = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "-f",
    "--help",
    "web1\n",
    "web1\nweb2",
    "web1\x00",
    "web1 web2",
    "wеb1",  # Cyrillic е
    "ｗｅｂ１",  # fullwidth
    "",
    "a" * 65,
    None,
    3,
    ["web1"],
    b"web1",
]

LIST_CALLS = [xl.XL_LIST_LONG, xl.XL_LIST]


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def idle(run_all, recording):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", XL_IDLE, "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", XL_IDLE, "xl_list")
    return run_all


@pytest.fixture
def guests(run_all):
    _synthetic(run_all)
    return run_all


class FakeClock:
    """Stands in for the module's ``time``: sleep() advances monotonic()."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(xl, "time", fake)
    return fake


# --- render_config ---------------------------------------------------------------


def test_render_config_order_and_types():
    text = xl.render_config(
        {
            "vcpus": 2,
            "type": "pvh",
            "name": "web1",
            "disk": ["phy:/dev/md/web1-disk0,xvda,w", "phy:/dev/md/web1-disk1,xvdb,w"],
            "acpi": True,
            "pae": False,
            "vif": [],
            "memory": 1024,
        }
    )
    assert text == (
        'name = "web1"\n'
        "acpi = 1\n"
        'disk = [ "phy:/dev/md/web1-disk0,xvda,w", "phy:/dev/md/web1-disk1,xvdb,w" ]\n'
        "memory = 1024\n"
        "pae = 0\n"
        'type = "pvh"\n'
        "vcpus = 2\n"
        "vif = [ ]\n"
    )


def test_render_config_escapes_quote_and_backslash():
    text = xl.render_config({"name": "web1", "extra": 'console=hvc0 a="b c" x\\y'})
    assert text.splitlines()[1] == 'extra = "console=hvc0 a=\\"b c\\" x\\\\y"'


def test_render_config_escapes_inside_lists():
    assert xl.render_config({"vif": ['a"b', "c\\"]}) == 'vif = [ "a\\"b", "c\\\\" ]\n'


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\u2028b", ["ok", "x\ny"]])
def test_render_config_refuses_control_characters(value):
    with pytest.raises(SaltInvocationError, match="'extra'.*control characters"):
        xl.render_config({"name": "web1", "extra": value})


@pytest.mark.parametrize(
    "value,match",
    [
        ({"a": 1}, "'bad'.*unsupported value type dict"),
        (1.5, "'bad'.*unsupported value type float"),
        (None, "'bad'.*unsupported value type NoneType"),
        ([1, 2], "'bad'.*list items must be strings"),
        ([["nested"]], "'bad'.*list items must be strings"),
        (-1, "'bad'.*negative"),
    ],
)
def test_render_config_refuses_unsupported_values(value, match):
    with pytest.raises(SaltInvocationError, match=match):
        xl.render_config({"name": "web1", "bad": value})


@pytest.mark.parametrize("key", ["Name", "1st", "on-reboot", "a b", "x\n", "", "é", 3, "name=\"x\"\nfoo"])
def test_render_config_refuses_bad_keys(key):
    with pytest.raises(SaltInvocationError, match="invalid xl.cfg key"):
        xl.render_config({key: "v"})


@pytest.mark.parametrize("config", [{}, None, "name=web1", [("name", "web1")]])
def test_render_config_needs_a_dict(config):
    with pytest.raises(SaltInvocationError, match="non-empty dict"):
        xl.render_config(config)


# --- create ------------------------------------------------------------------------


def _created_effect(run_all, name="web1"):
    """After `xl create`, the next list shows the guest (SYNTHETIC)."""
    run_all.outputs["xl"] = ""
    run_all.effects["xl"] = lambda argv: _synthetic(run_all, [name]) if argv[1] == "create" else None


def test_create_from_dict_runs_xl_create_then_reads_back(idle, tmp_path):
    seen = {}

    def effect(argv):
        if argv[1] == "create":
            path = argv[-1]
            seen["text"] = open(path, encoding="utf-8").read()
            seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)
            _synthetic(idle, ["web1"])

    idle.outputs["xl"] = ""
    idle.effects["xl"] = effect
    result = xl.create(config={"name": "web1", "type": "pvh", "memory": 1024}, tmp_dir=str(tmp_path))
    assert result == {"name": "web1", "domid": 3, "state": "blocked"}
    create_call = idle.calls[2]
    assert create_call[:2] == ["xl", "create"] and len(create_call) == 3
    assert os.path.dirname(create_call[2]) == str(tmp_path)
    assert idle.calls == LIST_CALLS + [create_call] + LIST_CALLS
    assert seen == {"text": 'name = "web1"\nmemory = 1024\ntype = "pvh"\n', "mode": 0o600}
    assert list(tmp_path.iterdir()) == []  # temp config removed


def test_create_paused(idle, tmp_path):
    _created_effect(idle)
    xl.create(config={"name": "web1"}, paused=True, tmp_dir=str(tmp_path))
    assert idle.calls[2][:3] == ["xl", "create", "-p"]


def test_create_failure_removes_temp_file_and_carries_stderr(idle, tmp_path):
    idle.outputs["xl"] = {"retcode": 3, "stderr": "libxl: error: failed to find disk /dev/md/web1-disk0"}
    with pytest.raises(CommandExecutionError, match="failed to find disk"):
        xl.create(config={"name": "web1"}, tmp_dir=str(tmp_path))
    assert idle.calls[2][:2] == ["xl", "create"]
    assert list(tmp_path.iterdir()) == []


def test_create_refuses_a_duplicate(guests, tmp_path):
    with pytest.raises(CommandExecutionError, match="web1 already exists"):
        xl.create(config={"name": "web1"}, tmp_dir=str(tmp_path))
    assert guests.calls == LIST_CALLS  # no xl create
    assert list(tmp_path.iterdir()) == []


def test_create_from_config_file(idle, tmp_path):
    cfg = tmp_path / "web1.cfg"
    cfg.write_text('# web1\ntype = "pvh"\nname = "web1"  # the guest\nmemory = 1024\n')
    _created_effect(idle)
    assert xl.create(config_file=str(cfg)) == {"name": "web1", "domid": 3, "state": "blocked"}
    assert idle.calls == LIST_CALLS + [["xl", "create", str(cfg)]] + LIST_CALLS
    assert cfg.exists()  # the caller's file is kept


def test_create_from_config_file_refuses_a_duplicate(guests, tmp_path):
    cfg = tmp_path / "db1.cfg"
    cfg.write_text("name='db1'\n")
    with pytest.raises(CommandExecutionError, match="db1 already exists"):
        xl.create(config_file=str(cfg))
    assert guests.calls == LIST_CALLS


@pytest.mark.parametrize(
    "content,match",
    [
        ("memory = 1024\n", "found 0"),
        ('name = "a"\nname = "b"\n', "found 2"),
        ('name = "$(id)"\n', "invalid guest name"),
    ],
)
def test_create_from_config_file_needs_one_valid_name(run_all, tmp_path, content, match):
    cfg = tmp_path / "g.cfg"
    cfg.write_text(content)
    with pytest.raises(SaltInvocationError, match=match):
        xl.create(config_file=str(cfg))
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one"),
        ({"config": {"name": "web1"}, "config_file": "/etc/xen/web1.cfg"}, "exactly one"),
        ({"config_file": "web1.cfg"}, "invalid config_file"),
        ({"config_file": "/etc/xen/../shadow"}, "invalid config_file"),
        ({"config_file": "/etc/xen/$(id).cfg"}, "invalid config_file"),
        ({"config_file": "/nonexistent/web1.cfg"}, "does not exist"),
        ({"config": {"name": "web1"}, "paused": "yes"}, "paused"),
        ({"config": {"memory": 1024}}, "invalid guest name: None"),
        ({"config": {"name": "-f"}}, "invalid guest name"),
        ({"config": {"name": "web1"}, "tmp_dir": "/nonexistent-dir"}, "not a directory"),
        ({"config": {"name": "web1"}, "tmp_dir": "run"}, "invalid tmp_dir"),
    ],
)
def test_create_refuses_bad_arguments_before_any_command(run_all, kwargs, match):
    with pytest.raises(SaltInvocationError, match=match):
        xl.create(**kwargs)
    assert run_all.calls == []


@pytest.mark.parametrize("name", INJECTIONS)
def test_create_refuses_injected_names(run_all, tmp_path, name):
    with pytest.raises(SaltInvocationError):
        xl.create(config={"name": name}, tmp_dir=str(tmp_path))
    assert run_all.calls == []
    assert list(tmp_path.iterdir()) == []


# --- shutdown / destroy -------------------------------------------------------


def test_shutdown_polls_until_gone(guests, clock):
    polls = {"n": 0}

    def effect(argv):
        if argv == xl.XL_LIST:
            polls["n"] += 1
            if polls["n"] == 2:  # gone at the second poll after xl shutdown
                _synthetic(guests, ["db1"])

    guests.outputs["xl"] = ""
    guests.effects["xl"] = effect
    assert xl.shutdown("web1", timeout=60) == {"name": "web1", "changed": True, "state": "absent"}
    assert guests.calls == LIST_CALLS + [["xl", "shutdown", "web1"]] + LIST_CALLS * 2
    assert clock.sleeps == [xl.POLL_INTERVAL] * 2


def test_shutdown_timeout_says_still_running_and_suggests_destroy(guests, clock):
    guests.outputs["xl"] = ""  # xl shutdown succeeds; the guest ignores it
    with pytest.raises(CommandExecutionError, match="web1 is still running 10s.*busybox.*destroy web1"):
        xl.shutdown("web1", timeout=10)
    assert guests.calls[:3] == LIST_CALLS + [["xl", "shutdown", "web1"]]
    assert guests.calls[3:] == LIST_CALLS * 5  # one xl list pair per poll
    assert sum(clock.sleeps) == 10


def test_shutdown_of_an_absent_guest_is_a_noop(idle):
    assert xl.shutdown("web1") == {"name": "web1", "changed": False, "state": "absent"}
    assert idle.calls == LIST_CALLS


def test_shutdown_of_a_shut_down_guest_is_a_noop(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = json.dumps([_domain(3, "web1", "pvh", 1048576, 2)])
    run_all.outputs[tuple(xl.XL_LIST)] = "\n".join(
        [_HEADER, _ROW % ("web1", 3, 1024, 2, "-", "-", "-", "s", "-", "-", 1.0)]
    )
    assert xl.shutdown("web1") == {"name": "web1", "changed": False, "state": "shutdown"}
    assert run_all.calls == LIST_CALLS


def test_shutdown_failure_carries_stderr(guests, clock):
    guests.outputs[("xl", "shutdown", "web1")] = {"retcode": 1, "stderr": "PV control interface not available"}
    with pytest.raises(CommandExecutionError, match="PV control interface"):
        xl.shutdown("web1")


@pytest.mark.parametrize("timeout", [-1, True, "10", 1.5, 86401])
def test_shutdown_refuses_bad_timeout(run_all, timeout):
    with pytest.raises(SaltInvocationError, match="timeout"):
        xl.shutdown("web1", timeout=timeout)
    assert run_all.calls == []


def test_destroy(guests):
    guests.outputs[("xl", "destroy", "db1")] = ""
    assert xl.destroy("db1") == {"name": "db1", "changed": True}
    assert guests.calls == LIST_CALLS + [["xl", "destroy", "db1"]]


def test_destroy_of_an_absent_guest_is_a_noop(idle):
    assert xl.destroy("db1") == {"name": "db1", "changed": False}
    assert idle.calls == LIST_CALLS


@pytest.mark.parametrize("func", [xl.shutdown, xl.destroy])
@pytest.mark.parametrize("name", INJECTIONS)
def test_stop_refuses_injected_names(run_all, func, name):
    with pytest.raises(SaltInvocationError, match="invalid guest name"):
        func(name)
    assert run_all.calls == []


# --- migrate -----------------------------------------------------------------------


def test_migrate(guests):
    guests.outputs[("xl", "migrate", "web1", "node2")] = ""
    result = xl.migrate("web1", "node2")
    assert result["argv"] == ["xl", "migrate", "web1", "node2"] and result["migrated"] is True
    assert guests.calls == LIST_CALLS + [["xl", "migrate", "web1", "node2"]]


def test_migrate_with_ssh_command(guests):
    guests.outputs["xl"] = ""
    xl.migrate("web1", "10.0.0.2", ssh_command="ssh -i /root/.ssh/xc -o BatchMode=yes")
    assert guests.calls[-1] == ["xl", "migrate", "-s", "ssh -i /root/.ssh/xc -o BatchMode=yes", "web1", "10.0.0.2"]


def test_migrate_dry_run_runs_only_the_checks(guests):
    result = xl.migrate("web1", "node2.lab.xen", dry_run=True)
    assert result == {
        "argv": ["xl", "migrate", "web1", "node2.lab.xen"],
        "checks": {"name": "web1", "domid": 3, "type": "pvh", "state": "blocked", "host": "node2.lab.xen"},
        "migrated": False,
    }
    assert guests.calls == LIST_CALLS


def test_migrate_refuses_a_pv_guest_before_any_migrate(guests):
    with pytest.raises(CommandExecutionError, match="db1 is a PV guest.*shadow paging.*PVH or HVM"):
        xl.migrate("db1", "node2")
    assert guests.calls == LIST_CALLS  # one list_domains read, no xl migrate


def test_migrate_refuses_a_guest_of_unknown_type(guests):
    with pytest.raises(CommandExecutionError, match="cannot tell the type"):
        xl.migrate("web2--incoming", "node2")
    assert guests.calls == LIST_CALLS


def test_migrate_refuses_an_unknown_guest(idle):
    with pytest.raises(CommandExecutionError, match="no guest named web1"):
        xl.migrate("web1", "node2", dry_run=True)
    assert idle.calls == LIST_CALLS


def test_migrate_failure_carries_stderr(guests):
    guests.outputs[("xl", "migrate", "web1", "node2")] = {
        "retcode": 1,
        "stderr": "migration sender: libxl_domain_suspend failed (rc=-3)",
    }
    with pytest.raises(CommandExecutionError, match="libxl_domain_suspend failed"):
        xl.migrate("web1", "node2")


@pytest.mark.parametrize("host", ["node2", "node2.lab.xen", "10.0.0.2", "fd00::2", "a-b"])
def test_migrate_accepts_hosts(guests, host):
    assert xl.migrate("web1", host, dry_run=True)["argv"][-1] == host


@pytest.mark.parametrize(
    "host",
    ["-oProxyCommand=id", "node2; id", "$(id)", "node2\n", "node2 id", "user@node2", "fe80::1%eth0",
     "nöde2", "-node2", "node2-", "", None, 2, "a" * 64, "node2.", ":::::"],
)
def test_migrate_refuses_bad_hosts(run_all, host):
    with pytest.raises(SaltInvocationError, match="invalid host"):
        xl.migrate("web1", host)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "ssh_command",
    ["ssh; id", "ssh $(id)", "ssh `id`", "ssh -o 'A=b'", "ssh  -p 22", "ssh\n-p", "-oFoo", "FOO=1 ssh",
     "", "ssh > /tmp/x", "ssh ~/.ssh", "ssh *", "ssh|id", "bash -c id&", ["ssh"]],
)
def test_migrate_refuses_bad_ssh_commands(run_all, ssh_command):
    with pytest.raises(SaltInvocationError, match="invalid ssh_command"):
        xl.migrate("web1", "node2", ssh_command=ssh_command)
    assert run_all.calls == []


@pytest.mark.parametrize("transport", ["tcp", "SSH", "Stream", None])
def test_migrate_other_transports_are_refused(run_all, transport):  # stream: test_xencluster_xl_stream.py
    with pytest.raises(SaltInvocationError, match="transport must be one of ssh, stream"):
        xl.migrate("web1", "node2", transport=transport)
    assert run_all.calls == []


def test_migrate_is_always_live(run_all):
    with pytest.raises(SaltInvocationError, match="always migrates live.*save and restore"):
        xl.migrate("web1", "node2", live=False)
    assert run_all.calls == []


@pytest.mark.parametrize("name", INJECTIONS)
def test_migrate_refuses_injected_names(run_all, name):
    with pytest.raises(SaltInvocationError, match="invalid guest name"):
        xl.migrate(name, "node2", dry_run=True)
    assert run_all.calls == []


# --- save / restore ------------------------------------------------------------------


def test_save(run_all, tmp_path):
    run_all.outputs["xl"] = ""
    path = str(tmp_path / "web1.save")
    assert xl.save("web1", path) == {"name": "web1", "path": path, "running": False}
    xl.save("web1", path, keep_running=True)
    assert run_all.calls == [["xl", "save", "web1", path], ["xl", "save", "-c", "web1", path]]


def test_save_refuses_an_existing_file_unless_overwrite(run_all, tmp_path):
    run_all.outputs["xl"] = ""
    image = tmp_path / "web1.save"
    image.write_text("old")
    with pytest.raises(SaltInvocationError, match="already exists"):
        xl.save("web1", str(image))
    assert run_all.calls == []
    xl.save("web1", str(image), overwrite=True)
    assert run_all.calls == [["xl", "save", "web1", str(image)]]


@pytest.mark.parametrize(
    "path,match",
    [
        ("web1.save", "invalid path"),
        ("/nonexistent-dir/web1.save", "directory of"),
        ("/tmp/../etc/web1.save", "invalid path"),
        ("/tmp/web1;id", "invalid path"),
        ("/tmp/web1\n", "invalid path"),
        ("-c", "invalid path"),
        (None, "invalid path"),
    ],
)
def test_save_refuses_bad_paths(run_all, path, match):
    with pytest.raises(SaltInvocationError, match=match):
        xl.save("web1", path)
    assert run_all.calls == []


@pytest.mark.parametrize("name", INJECTIONS)
def test_save_refuses_injected_names(run_all, tmp_path, name):
    with pytest.raises(SaltInvocationError, match="invalid guest name"):
        xl.save(name, str(tmp_path / "g.save"))
    assert run_all.calls == []


def test_save_failure_carries_stderr(run_all, tmp_path):
    run_all.outputs["xl"] = {"retcode": 1, "stderr": "web1 is an invalid domain identifier"}
    with pytest.raises(CommandExecutionError, match="invalid domain identifier"):
        xl.save("web1", str(tmp_path / "web1.save"))


def test_restore(run_all, tmp_path):
    run_all.outputs["xl"] = ""
    image = tmp_path / "web1.save"
    image.write_text("image")
    assert xl.restore(str(image)) == {"path": str(image), "paused": False}
    xl.restore(str(image), paused=True)
    assert run_all.calls == [["xl", "restore", str(image)], ["xl", "restore", "-p", str(image)]]


@pytest.mark.parametrize("path", ["/nonexistent/web1.save", "web1.save", "$(id)", "-p", None])
def test_restore_refuses_bad_paths(run_all, path):
    with pytest.raises(SaltInvocationError):
        xl.restore(path)
    assert run_all.calls == []


# --- mem_set / vcpu_set / sched_credit2 ------------------------------------------


@pytest.mark.parametrize(
    "memory,arg",
    [
        ("512M", "512m"),
        ("2G", "2g"),
        ("2g", "2g"),
        ("1048576K", "1048576k"),
        (512 * 1024**2, "512m"),
        (1536 * 1024, "1536k"),
    ],
)
def test_mem_set(run_all, memory, arg):
    run_all.outputs["xl"] = ""
    assert xl.mem_set("web1", memory) == {"name": "web1", "memory": arg}
    assert run_all.calls == [["xl", "mem-set", "web1", arg]]


@pytest.mark.parametrize(
    "memory",
    ["512", "512MB", "512MiB", " 512M", "512M\n", "0M", "-512M", "1.5G", "0x200M", "512 M", "５１２M",
     "99999999999T", 0, -1024, 1000, True, 1.0, None, ["512M"]],
)
def test_mem_set_refuses_bad_memory(run_all, memory):
    with pytest.raises(SaltInvocationError, match="memory"):
        xl.mem_set("web1", memory)
    assert run_all.calls == []


def test_vcpu_set(run_all):
    run_all.outputs["xl"] = ""
    assert xl.vcpu_set("web1", 2) == {"name": "web1", "vcpus": 2}
    assert run_all.calls == [["xl", "vcpu-set", "web1", "2"]]


def test_vcpu_set_overcommit_only_when_allowed(run_all):
    # the lab's stderr: xl vcpu-set on a dom0 with 1 physical CPU
    run_all.outputs[("xl", "vcpu-set", "probe", "2")] = {
        "retcode": 1, "stdout": "",
        "stderr": "You are overcommmitting! You have 1 physical CPUs and want 2 vCPUs! Aborting, "
                  "use --ignore-host to continue\n",
    }  # fmt: skip
    with pytest.raises(CommandExecutionError, match="overcommmitting"):
        xl.vcpu_set("probe", 2)
    run_all.outputs[("xl", "vcpu-set", "--ignore-host", "probe", "2")] = ""
    assert xl.vcpu_set("probe", 2, allow_overcommit=True) == {"name": "probe", "vcpus": 2}
    with pytest.raises(SaltInvocationError):
        xl.vcpu_set("probe", 2, allow_overcommit="yes")


@pytest.mark.parametrize("vcpus", [0, -1, True, "2", 2.0, None, 1025])
def test_vcpu_set_refuses_bad_counts(run_all, vcpus):
    with pytest.raises(SaltInvocationError, match="vcpus"):
        xl.vcpu_set("web1", vcpus)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs,tail",
    [
        ({"weight": 512, "cap": 100}, ["-w", "512", "-c", "100"]),
        ({"weight": 1}, ["-w", "1"]),
        ({"cap": 0}, ["-c", "0"]),
        ({"weight": 65535, "cap": 10000}, ["-w", "65535", "-c", "10000"]),
    ],
)
def test_sched_credit2(run_all, kwargs, tail):
    run_all.outputs["xl"] = ""
    xl.sched_credit2("web1", **kwargs)
    assert run_all.calls == [["xl", "sched-credit2", "-d", "web1"] + tail]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "weight and/or cap"),
        ({"weight": 0}, "weight"),
        ({"weight": 65536}, "weight"),
        ({"weight": "256"}, "weight"),
        ({"weight": True}, "weight"),
        ({"cap": -1}, "cap"),
        ({"cap": 10001}, "cap"),
        ({"cap": "-w 1"}, "cap"),
    ],
)
def test_sched_credit2_refuses_bad_values(run_all, kwargs, match):
    with pytest.raises(SaltInvocationError, match=match):
        xl.sched_credit2("web1", **kwargs)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "call",
    [
        lambda n: xl.mem_set(n, "512M"),
        lambda n: xl.vcpu_set(n, 2),
        lambda n: xl.sched_credit2(n, weight=256),
    ],
)
@pytest.mark.parametrize("name", INJECTIONS)
def test_tuning_refuses_injected_names(run_all, call, name):
    with pytest.raises(SaltInvocationError, match="invalid guest name"):
        call(name)
    assert run_all.calls == []


def test_every_public_function_has_a_cli_example():
    for func in (xl.render_config, xl.create, xl.shutdown, xl.destroy, xl.migrate, xl.save,
                 xl.restore, xl.mem_set, xl.vcpu_set, xl.sched_credit2):
        assert "CLI Example:" in func.__doc__, func.__name__
