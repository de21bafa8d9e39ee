"""xencluster_xl.create_degraded: a guest started from its xl.cfg minus the disks of a dead node.

The config files are what ``xencluster_guest.defined`` writes: the state's
renderer (``guest_config`` over ``xencluster_model.node_view`` of the frozen
lab model ``tests/unit/data/two_node_model.sls``) and ``render_config``. The
dom0 is the recording ``xl/lab-node1-idle`` (no guest); after ``xl create``
the SYNTHETIC listing of test_xencluster_xl_lifecycle.py shows the guest.
"""

import copy
import os
import pathlib
import stat

import pytest
import salt.utils.yaml
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError
from test_xencluster_xl_lifecycle import LIST_CALLS
from test_xencluster_xl_lifecycle import _synthetic

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl
from saltext.xencluster.states import xencluster_guest as guest_state

RAW = salt.utils.yaml.safe_load(
    (pathlib.Path(__file__).resolve().parent / "data" / "two_node_model.sls").read_text()
)["xencluster"]
NODE1_LEGS = ["/dev/xencluster/web1.root.node1", "/dev/xencluster/web1.data.node1"]
WEB1_DISKS = [
    "format=raw,vdev=xvda,access=rw,target=/dev/xencluster/web1.root.node1",
    "format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/web1.root.node2",
    "format=raw,vdev=xvdc,access=rw,target=/dev/xencluster/web1.data.node1",
    "format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/web1.data.node2",
]


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def idle(run_all, recording):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", "lab-node1-idle", "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", "lab-node1-idle", "xl_list")
    return run_all


def defined(tmp_path, guest="web1", node="node2"):
    """The file ``xencluster_guest.defined`` writes for ``guest`` on ``node``."""
    view = model_mod.node_view(node, copy.deepcopy(RAW))
    path = tmp_path / f"{guest}.cfg"
    path.write_text(xl.render_config(guest_state.guest_config(view["guests"][guest], node)))
    return path


def creating(run_all):
    """``xl create`` records the text and mode of its config, then the guest is listed."""
    seen = []

    def effect(argv):
        if argv[1] == "create":
            seen.append((pathlib.Path(argv[-1]).read_text(), stat.S_IMODE(os.stat(argv[-1]).st_mode)))
            _synthetic(run_all, ["web1"])

    run_all.outputs["xl"] = ""
    run_all.effects["xl"] = effect
    return seen


def test_the_state_config_minus_the_dead_legs_keeps_the_vdevs(idle, tmp_path):
    cfg = defined(tmp_path)
    original = cfg.read_text()
    assert f"disk = {xl._render_value('disk', WEB1_DISKS)}\n" in original  # both legs of both disks
    seen = creating(idle)
    run = tmp_path / "run"
    run.mkdir()
    result = xl.create_degraded(str(cfg), NODE1_LEGS, tmp_dir=str(run))
    kept = [WEB1_DISKS[1], WEB1_DISKS[3]]
    [(text, mode)] = seen
    assert text == original.replace(xl._render_value("disk", WEB1_DISKS), xl._render_value("disk", kept))
    assert mode == 0o600 and text != original
    assert result == {"name": "web1", "config_file": str(cfg), "disk": kept, "without": [WEB1_DISKS[0], WEB1_DISKS[2]],
                      "created": True, "config": text, "domid": 3, "state": "blocked"}  # fmt: skip
    create = idle.calls[2]
    assert create[:2] == ["xl", "create"] and os.path.dirname(create[2]) == str(run) and len(create) == 3
    assert idle.calls == LIST_CALLS + [create] + LIST_CALLS
    assert cfg.read_text() == original and list(run.iterdir()) == []  # the file kept, the copy removed


def test_the_other_node_dead_keeps_the_first_leg_of_each_pair(idle, tmp_path):
    cfg = defined(tmp_path, node="node1")
    result = xl.create_degraded(str(cfg), ["/dev/xencluster/web1.root.node2", "/dev/xencluster/web1.data.node2"],
                                dry_run=True)  # fmt: skip
    assert result["disk"] == [WEB1_DISKS[0], WEB1_DISKS[2]] and result["created"] is False


def test_dry_run_reads_the_file_and_runs_nothing(run_all, tmp_path):
    cfg = defined(tmp_path, "db1")
    result = xl.create_degraded(str(cfg), ["/dev/xencluster/db1.root.node1"], dry_run=True)
    assert result["disk"] == ["format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/db1.root.node2"]
    assert result["without"] == ["format=raw,vdev=xvda,access=rw,target=/dev/xencluster/db1.root.node1"]
    assert 'disk = [ "format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/db1.root.node2" ]\n' in result["config"]
    assert run_all.calls == []


def test_a_path_that_backs_no_disk_is_refused(run_all, tmp_path):
    cfg = defined(tmp_path)
    with pytest.raises(SaltInvocationError, match=r"no disk is backed by /dev/xencluster/web1.swap.node1 \(disks: "):
        xl.create_degraded(str(cfg), [NODE1_LEGS[0], "/dev/xencluster/web1.swap.node1"])
    assert run_all.calls == []


def test_leaving_out_every_disk_is_refused(run_all, tmp_path):
    cfg = defined(tmp_path, "db1")
    with pytest.raises(SaltInvocationError, match="leaves the guest no disk"):
        xl.create_degraded(str(cfg), ["/dev/xencluster/db1.root.node1", "/dev/xencluster/db1.root.node2"])
    assert run_all.calls == []


@pytest.mark.parametrize(
    "text, match",
    [
        ('name = "web1"\nmemory = 128\n', "expected exactly one 'disk = \\[ ... \\]' line, found 0"),
        ('name = "web1"\ndisk = [ "target=/a" ]\ndisk = [ "target=/b" ]\n', "found 2"),
        ("name = \"web1\"\ndisk = [ 'format=raw,target=/dev/xencluster/web1.root.node1' ]\n", "not one render_config"),
        ('name = "web1"\ndisk = ["format=raw,target=/dev/xencluster/web1.root.node1"]\n', "not one render_config"),
        ('name = "web1"\ndisk = [ "target=/dev/xencluster/web1.root.node1" ] # x\n', "not one render_config"),
    ],
)  # fmt: skip
def test_a_config_render_config_did_not_write_is_refused(run_all, tmp_path, text, match):
    cfg = tmp_path / "web1.cfg"
    cfg.write_text(text)
    with pytest.raises(SaltInvocationError, match=match):
        xl.create_degraded(str(cfg), [NODE1_LEGS[0]])
    assert run_all.calls == []


@pytest.mark.parametrize(
    "without, match",
    [
        ([], "must be a list of 1 to 256 paths"),
        ("/dev/xencluster/web1.root.node1", "must be a list"),
        (None, "must be a list"),
        ([NODE1_LEGS[0], NODE1_LEGS[0]], "names a path twice"),
        (["dev/xencluster/web1.root.node1"], "invalid without"),
        (["/dev/xencluster/../sda"], "invalid without"),
        (["/dev/x; rm -rf /"], "invalid without"),
        ([3], "invalid without"),
    ],
)  # fmt: skip
def test_bad_without_is_refused(run_all, tmp_path, without, match):
    cfg = defined(tmp_path)
    with pytest.raises(SaltInvocationError, match=match):
        xl.create_degraded(str(cfg), without)
    assert run_all.calls == []


def test_bad_config_file_and_dry_run(run_all, tmp_path):
    with pytest.raises(SaltInvocationError, match="config_file does not exist"):
        xl.create_degraded(str(tmp_path / "nope.cfg"), NODE1_LEGS)
    with pytest.raises(SaltInvocationError, match="invalid config_file"):
        xl.create_degraded("web1.cfg", NODE1_LEGS)
    with pytest.raises(SaltInvocationError, match="dry_run must be True or False"):
        xl.create_degraded(str(defined(tmp_path)), NODE1_LEGS, dry_run="yes")
    assert run_all.calls == []


def test_a_guest_of_that_name_here_is_refused_and_nothing_left_behind(run_all, tmp_path):
    _synthetic(run_all, ["web1"])
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CommandExecutionError, match="a domain named web1 already exists"):
        xl.create_degraded(str(defined(tmp_path)), NODE1_LEGS, tmp_dir=str(run))
    assert run_all.calls == LIST_CALLS and list(run.iterdir()) == []


def test_xl_create_failing_removes_the_copy(idle, tmp_path):
    idle.outputs["xl"] = {"retcode": 1, "stderr": "libxl: error: failed to find disk /dev/xencluster/web1.root.node2"}
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CommandExecutionError, match="failed to find disk"):
        xl.create_degraded(str(defined(tmp_path)), NODE1_LEGS, tmp_dir=str(run))
    assert list(run.iterdir()) == []


@pytest.mark.parametrize(
    "entry, target",
    [
        ("format=raw,vdev=xvda,access=rw,target=/dev/xencluster/a.b.c", "/dev/xencluster/a.b.c"),
        ("target=/dev/x", "/dev/x"),
        ("phy:/dev/x,xvda,w", None),  # positional form: not what the state writes
        ("format=raw,vdev=xvda,footarget=/dev/x", None),
    ],
)  # fmt: skip
def test_disk_target(entry, target):
    assert xl._disk_target(entry) == target
