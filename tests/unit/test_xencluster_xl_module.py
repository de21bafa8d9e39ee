"""xencluster_xl execution module.

No Xen here, so no recording yet (see tests/recordings/README.md, "pending").
The outputs below are SYNTHETIC, built from Xen 4.17's source
(xen-project/xen tag RELEASE-4.17.5), not captured:

* ``xl list -l``: tools/xl/xl_info.c ``list_domains_details()`` prints a JSON
  array of ``printf_info_one_json()`` objects ``{"domid": n, "config":
  libxl_domain_config}``, skipping any domain whose configuration
  ``libxl_retrieve_domain_configuration()`` cannot return (Domain-0 among
  them). Field names and enum spellings come from
  tools/libs/light/libxl_types.idl (``c_info.type`` is "hvm"/"pv"/"pvh",
  ``b_info.max_vcpus``, ``b_info.target_memkb``...), default-valued fields are
  left out (gentypes.py), keyed unions appear as ``"type.pv": {...}``.
* ``xl list``: the header and ``printf("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f")``
  of ``list_domains()``.
* ``xl info``: the ``"key<pad>: value"`` lines of ``output_nodeinfo()``,
  ``output_physinfo()`` and ``output_xeninfo()``.
"""

import json

import pytest
from salt.exceptions import CommandExecutionError

from saltext.xencluster.modules import xencluster_xl as xl


def _domain(domid, name, dtype, memkb, vcpus, extra_b_info=None):
    return {
        "domid": domid,
        "config": {
            "c_info": {
                "type": dtype,
                "name": name,
                "uuid": f"6a3c3a8e-0000-4000-8000-00000000000{domid}",
                "run_hotplug_scripts": "True",
            },
            "b_info": {
                "max_vcpus": vcpus,
                "avail_vcpus": list(range(vcpus)),
                "max_memkb": memkb,
                "target_memkb": memkb,
                "sched_params": {},
                **(extra_b_info or {}),
            },
            "disks": [
                {
                    "pdev_path": f"/dev/md/{name}-disk0",
                    "vdev": "xvda",
                    "format": "raw",
                    "readwrite": 1,
                }
            ],
            "nics": [{"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "br-svc10"}],
            "on_reboot": "restart",
        },
    }


XL_LIST_L = json.dumps(
    [
        _domain(3, "web1", "pvh", 1048576, 2, {"type.pvh": {}}),
        _domain(5, "db1", "pv", 4194304, 4, {"type.pv": {"kernel": "/boot/vmlinuz"}}),
        _domain(7, "win1", "hvm", 2097152, 2, {"type.hvm": {"acpi": "True"}}),
    ],
    indent=4,
)

_ROW = "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"
XL_LIST = "\n".join(
    [
        "Name                                        ID   Mem VCPUs\tState\tTime(s)",
        _ROW % ("Domain-0", 0, 2048, 2, "r", "-", "-", "-", "-", "-", 812.4),
        _ROW % ("web1", 3, 1024, 2, "-", "b", "-", "-", "-", "-", 42.0),
        _ROW % ("db1", 5, 4096, 4, "r", "-", "-", "-", "-", "-", 1200.5),
        _ROW % ("win1", 7, 2048, 2, "-", "-", "-", "s", "c", "-", 3.1),
        # being created / not retrievable: in `xl list`, absent from `xl list -l`
        _ROW % ("web2--incoming", 9, 512, 1, "-", "-", "p", "-", "-", "-", 0.0),
    ]
) + "\n"

XL_INFO = """\
host                   : node1
release                : 6.1.0-28-amd64
version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)
machine                : x86_64
nr_cpus                : 2
max_cpu_id             : 1
nr_nodes               : 1
cores_per_socket       : 2
threads_per_core       : 1
cpu_mhz                : 2399.998
hw_caps                : 178bfbff:f6d8320b:2fd3fbff:00000000:00000000:00000000:00000000:00000000
virt_caps              : pv hvm hap shadow gnttab-v1 gnttab-v2
total_memory           : 2047
free_memory            : 1010
sharing_freed_memory   : 0
sharing_used_memory    : 0
outstanding_claims     : 0
free_cpus              : 0
xen_major              : 4
xen_minor              : 17
xen_extra              : .5
xen_version            : 4.17.5
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
xen_scheduler          : credit2
xen_pagesize           : 4096
platform_params        : virt_start=0xffff800000000000
xen_changeset          :
xen_commandline        : placeholder dom0_mem=1024M,max:1024M
cc_compiler            : x86_64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0
cc_compile_by          : pkg-xen-devel
cc_compile_domain      : lists.alioth.debian.org
cc_compile_date        : Mon Jan  1 00:00:00 UTC 2024
build_id               : 0123456789abcdef0123456789abcdef01234567
xend_config_format     : 4
"""


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def xl_host(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = XL_LIST_L
    run_all.outputs[tuple(xl.XL_LIST)] = XL_LIST
    run_all.outputs[tuple(xl.XL_INFO)] = XL_INFO
    return run_all


def test_list_domains(xl_host):
    assert xl.list_domains() == {
        "web1": {"domid": 3, "type": "pvh", "memory": 1024**3, "vcpus": 2, "state": "blocked"},
        "db1": {"domid": 5, "type": "pv", "memory": 4 * 1024**3, "vcpus": 4, "state": "running"},
        "win1": {"domid": 7, "type": "hvm", "memory": 2 * 1024**3, "vcpus": 2, "state": "crashed"},
        # from `xl list` only: never let a domain go unseen
        "web2--incoming": {
            "domid": 9,
            "type": None,
            "memory": 512 * 1024**2,
            "vcpus": 1,
            "state": "paused",
        },
    }


def test_list_domains_never_lists_dom0(xl_host):
    assert "Domain-0" not in xl.list_domains()
    assert all(d["domid"] != 0 for d in xl.list_domains().values())


def test_list_domains_two_calls_for_many_guests(run_all):
    many = [_domain(i, f"g{i}", "pvh", 262144, 1) for i in range(1, 201)]
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = json.dumps(many)
    run_all.outputs[tuple(xl.XL_LIST)] = "\n".join(
        ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
        + [_ROW % (f"g{i}", i, 256, 1, "-", "b", "-", "-", "-", "-", 1.0) for i in range(1, 201)]
    )
    assert len(xl.list_domains()) == 200
    assert run_all.calls == [["xl", "list", "-l"], ["xl", "list"]]


def test_list_domains_empty_host(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = "[\n]\n"
    run_all.outputs[tuple(xl.XL_LIST)] = (
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
        + _ROW % ("Domain-0", 0, 2048, 2, "r", "-", "-", "-", "-", "-", 9.0)
        + "\n"
    )
    assert xl.list_domains() == {}


@pytest.mark.parametrize(
    "flags,state",
    [
        ("r-----", "running"),
        ("-b----", "blocked"),
        ("------", "runnable"),
        ("--p---", "paused"),
        ("---s--", "shutdown"),
        ("---sr-", "shutdown"),
        ("---sc-", "crashed"),
        ("-b---d", "dying"),
    ],
)
def test_states(flags, state):
    assert xl._state(flags) == state  # pylint: disable=protected-access


def test_sxp_output_is_refused(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = "(domain\n\t(domid 3)\n)"
    with pytest.raises(CommandExecutionError, match="output_format"):
        xl.list_domains()


def test_unexpected_list_line_is_refused(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = "[]"
    run_all.outputs[tuple(xl.XL_LIST)] = "Name ID Mem VCPUs State Time(s)\nweb1 3 x 2 -b---- 1.0\n"
    with pytest.raises(CommandExecutionError, match="unexpected xl list line"):
        xl.list_domains()


def test_xl_failure_carries_stderr(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = {
        "retcode": 1,
        "stderr": "xencall: error: Could not obtain handle on privileged command interface",
    }
    with pytest.raises(CommandExecutionError, match="privileged command interface"):
        xl.list_domains()


def test_info(xl_host):
    info = xl.info()
    assert xl_host.calls == [["xl", "info"]]
    assert info["host"] == "node1"
    assert info["nr_cpus"] == 2
    assert info["total_memory"] == 2047
    assert info["xen_major"] == 4 and info["xen_minor"] == 17
    assert info["xen_extra"] == ".5"  # not a number
    assert info["xen_version"] == "4.17.5"
    assert info["cpu_mhz"] == "2399.998"
    assert info["hw_caps"].count(":") == 7  # values keep their colons
    assert info["virt_caps"] == "pv hvm hap shadow gnttab-v1 gnttab-v2"
    assert info["xen_changeset"] == ""
    assert info["xend_config_format"] == 4


@pytest.mark.parametrize(
    "content,expected",
    [
        ("control_d\n", True),
        ("", False),  # a domU: xenfs mounted, no control_d
    ],
)
def test_is_dom0(tmp_path, monkeypatch, content, expected):
    caps = tmp_path / "capabilities"
    caps.write_text(content)
    monkeypatch.setattr(xl, "CAPABILITIES", str(caps))
    assert xl.is_dom0() is expected


def test_is_dom0_without_xenfs(tmp_path, monkeypatch):
    monkeypatch.setattr(xl, "CAPABILITIES", str(tmp_path / "absent"))
    assert xl.is_dom0() is False


def test_virtual(tmp_path, monkeypatch):
    caps = tmp_path / "capabilities"
    caps.write_text("control_d\n")
    monkeypatch.setattr(xl, "CAPABILITIES", str(caps))
    monkeypatch.setattr(xl.salt.utils.path, "which", lambda name: None)
    assert xl.__virtual__() == (False, "xencluster_xl: the xl binary is not installed")

    monkeypatch.setattr(xl.salt.utils.path, "which", lambda name: f"/usr/sbin/{name}")
    assert xl.__virtual__() == "xencluster_xl"

    caps.write_text("")
    ok, reason = xl.__virtual__()
    assert ok is False and "not a Xen dom0" in reason


def test_domain_destroyed_between_the_two_calls(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = json.dumps([_domain(3, "web1", "pvh", 1048576, 2)])
    run_all.outputs[tuple(xl.XL_LIST)] = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    assert xl.list_domains() == {
        "web1": {"domid": 3, "type": "pvh", "memory": 1024**3, "vcpus": 2, "state": "gone"}
    }
