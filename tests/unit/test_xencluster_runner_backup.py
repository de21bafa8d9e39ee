"""xencluster.backup and xencluster.restore_backup runners: node choice, refusals, the volume, backup, restore.

The model is the frozen lab model (``tests/unit/data/two_node_model.sls``, as
the migrate and recover tests use it: web1 with disks root (ext4) and data
(xfs) runs on node1, db1 with root (ext4) on node2) plus the backup section
``with_backup`` adds: target bk1 on node1 (VG xcvg), the default, retention
``daily: 2``.

Each dom0 is a SYNTHETIC ``Dom0`` behind the REAL ``xencluster_backup`` and
``xencluster_lvm`` modules. Their commands answer with real recordings:
``tests/unit/data/backup`` (mdadm --examine, losetup, blkid, mount, rsync,
umount, mdadm --zero-superblock) and ``tests/recordings/lvm/lab-node1-snapshots``
(pvs, vgs and the lvs rows of a lab dom0: an LV, an open LV, a 37.66% full
snapshot and an overflowed one at 100%). Copies renamed, SYNTHETIC in their
names only: the lvs rows carry the model's leg ids (an exported leg is the
open row, the backup volume ``xcbackup-bk1`` a copy of the open row too), and
each loop device gets its own number. The rest of a dom0 (``mount.active``,
``disk.blkid``, ``mount.mount``, ``file.mkdir``, ``xencluster_lio.unexport``,
``xencluster_iscsi.logout``) is written here in the shape Salt and the modules
return. Domains are the recorded running PVH probe (the migrate tests'
``running``), the stable paths their SYNTHETIC ``node_links``, ``xl info`` the
recording they use.
"""

import copy
import json
import os
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.config
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError
from test_xencluster_backup_module import NOW
from test_xencluster_backup_module import STAMP
from test_xencluster_backup_module import _layout
from test_xencluster_backup_module import lab
from test_xencluster_backup_module import lab_stderr
from test_xencluster_backup_module import rec
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import LIST
from test_xencluster_runner_migrate import RAW
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import Bus
from test_xencluster_runner_migrate import node_links
from test_xencluster_runner_migrate import recorded_info
from test_xencluster_runner_migrate import running
from test_xencluster_runner_recover import three_nodes

from saltext.xencluster.modules import xencluster_backup as backup_mod
from saltext.xencluster.modules import xencluster_lvm as lvm_mod
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.runners import xencluster as runner

VOLUME = list(runner.VOLUME_FUNS)
BACKUP, PRUNE, RESTORE, INVALIDATE = runner.BACKUP_FUN, runner.PRUNE_FUN, runner.RESTORE_FUN, runner.INVALIDATE_FUN
MOUNT, MKDIR, UNEXPORT, LOGOUT = runner.MOUNT_FUN, runner.MKDIR_FUN, runner.UNEXPORT_FUN, runner.LOGOUT_FUN
LVS = lvm_mod.LVS_ARGV
LAB_ROWS = {row["lv_name"]: row for row in json.loads(lab("lvs.xcvg"))["report"][0]["lv"]}
UUID = "6a26659a:350b5f59:385754c0:6857aa6a"  # the md array of examine.clean and examine.partner-ok
IQN = "iqn.2025-01.lab.xen"
SAFE_OPTS = ["rw", "nosuid", "nodev", "noexec", "relatime"]


def with_backup(raw=RAW, retention=None, **targets):
    """``raw`` plus a backup section: ``targets`` (default bk1 on node1), the first the default."""
    raw = copy.deepcopy(raw)
    targets = targets or {"bk1": {"node": "node1", "vg": "xcvg"}}
    raw["backup"] = {"targets": targets, "default": next(iter(targets)),
                     "retention": {"daily": 2} if retention is None else retention}  # fmt: skip
    if not raw["backup"]["retention"]:
        del raw["backup"]["retention"]
    return raw


def lv_row(source, name, origin=None):
    """A recorded lvs row under another name (and origin)."""
    row = dict(LAB_ROWS[source], lv_name=name, lv_path=f"/dev/xcvg/{name}")
    return dict(row, origin=origin) if origin else row


def ok(stdout):
    return {"retcode": 0, "stdout": stdout, "stderr": ""}


class Dom0:
    """One SYNTHETIC dom0: what its commands print (recordings) and what Salt's functions there return."""

    def __init__(self, name, fs, root):
        self.name = name
        self.fs = dict(fs)  # leg -> the filesystem in its md data area (None: blank)
        self.legs = set(fs)
        self.open = set(fs)  # exported over LIO: LVM shows them open
        self.snapshots = {}  # snapshot -> origin
        self.overflow = set()  # legs whose snapshot fills up
        self.examine = {}  # path -> recording, over the defaults of examine_of
        self.rsync = "rsync.backup1"
        self.volume = None  # (LV, filesystem) of a backup volume
        self.mounts = {"/": {"device": "/dev/vda1", "fstype": "ext4", "opts": ["rw", "relatime"]}}
        self.root = root
        self.domains = {}
        self.links = {}
        self.silent = False
        self.retcode = 0  # set by a function that ran a failing command (as cmd.run_all sets __context__)
        self.loops = {}
        self.commands = []  # argv of every command run
        self.done = []  # (function, args, kwargs) of the functions written here

    # --- commands (cmd.run_all of the real modules) ---

    def run(self, argv):
        self.commands.append(list(argv))
        if argv[0] in ("pvs", "vgs"):
            return ok(lab(argv[0]))
        if argv[: len(LVS)] == LVS:
            return self.lvs(argv[len(LVS):])
        if argv[0] == "lvcreate":
            self.snapshots[argv[argv.index("--name") + 1]] = argv[-1].split("/")[1]
            return ok("")
        if argv[0] == "lvremove":
            del self.snapshots[argv[-1].split("/")[1]]
            return ok("")
        if argv[:2] == ["mdadm", "--examine"]:
            return rec(self.examine_of(argv[2]))
        if argv[:2] == ["mdadm", "--zero-superblock"]:
            return rec("zero.leg")
        if argv[:3] == ["losetup", "--find", "--show"]:
            return self.attach(argv[-1])
        if argv[:2] == ["losetup", "--detach"]:
            return rec("losetup_detach.backup1")
        if argv[:5] == ["blkid", "--probe", "--output", "export", "--"]:
            return rec(f"blkid.{self.fs[self.loops[argv[5]]]}")
        if argv[0] in ("mount", "umount"):
            return rec(f"{argv[0]}.backup1")
        if argv[0] == "rsync":
            return rec(self.rsync)
        raise AssertionError(f"unexpected command on {self.name}: {argv}")

    def rows(self):
        rows = [lv_row("db1-disk0-a" if lv in self.open else "web1-disk0-a", lv) for lv in self.legs]
        rows += [lv_row("web1-disk0-a-tiny" if origin in self.overflow else "web1-disk0-a-snap", name, origin)
                 for name, origin in self.snapshots.items()]  # fmt: skip
        rows += [lv_row("db1-disk0-a", self.volume[0])] if self.volume else []
        return sorted(rows, key=lambda r: r["lv_name"])

    def lvs(self, select):
        rows = self.rows()
        if select and "/" in select[0]:
            rows = [r for r in rows if f"xcvg/{r['lv_name']}" == select[0]]
            if not rows:
                return {"retcode": 5, "stdout": lab("lvs.xcvg+nope"),
                        "stderr": lab_stderr("lvs.xcvg+nope").replace("xcvg/nope", select[0])}  # fmt: skip
        return ok(json.dumps({"report": [{"lv": rows}]}))

    def examine_of(self, path):
        if path in self.examine:
            return self.examine[path]
        if path.startswith("/dev/xencluster/"):
            return "examine.partner-ok"  # the other leg: device 1 of the same array
        return "examine.active" if path.rsplit("/", 1)[1] in self.snapshots else "examine.clean"

    def attach(self, device):
        name = device.rsplit("/", 1)[1]
        leg = self.snapshots.get(name, name)
        loop = f"/dev/loop{len(self.loops)}"
        self.loops[loop] = leg
        out = rec(f"losetup.{self.fs[leg]}")
        return dict(out, stdout=out["stdout"].replace("/dev/loop0", loop))

    # --- Salt functions the runner publishes ---

    def functions(self):
        return {
            runner.LVM_FUN: lvm_mod.report, runner.MOUNTS_FUN: lambda: copy.deepcopy(self.mounts),
            runner.BLKID_FUN: self.blkid, LIST: lambda: copy.deepcopy(self.domains), MOUNT: self.mount,
            MKDIR: self.mkdir, REPORT: self.report, INFO: recorded_info, BACKUP: backup_mod.backup_leg,
            PRUNE: backup_mod.prune, RESTORE: backup_mod.restore_leg, INVALIDATE: backup_mod.invalidate_leg,
            UNEXPORT: self.unexport, LOGOUT: self.logout,
        }  # fmt: skip

    def blkid(self, device):
        if self.volume and device == f"/dev/xcvg/{self.volume[0]}" and self.volume[1]:
            return {device: {"UUID": "0a1b2c3d-0000-4000-8000-000000000001", "TYPE": self.volume[1]}}
        self.retcode = 2  # blkid found nothing: exit status 2, which cmd.run_all makes the call's retcode
        return {}

    def mount_volume(self):
        path = f"{self.root}/bk1"
        os.makedirs(path, exist_ok=True)
        self.mounts[path] = {"device": "/dev/mapper/xcvg-xcbackup--bk1", "fstype": "ext4", "opts": SAFE_OPTS}
        return path

    def mount(self, name, device, mkmnt=False, fstype="", opts="defaults"):
        self.done.append((MOUNT, [name, device], {"mkmnt": mkmnt, "fstype": fstype, "opts": opts}))
        assert device == f"/dev/xcvg/{self.volume[0]}" and mkmnt is True
        os.makedirs(name, exist_ok=True)
        self.mounts[name] = {"device": "/dev/mapper/xcvg-xcbackup--bk1", "fstype": fstype,
                             "opts": ["rw", *opts.split(",")]}  # fmt: skip
        return True

    def mkdir(self, dir_path, mode=None):
        self.done.append((MKDIR, [dir_path], {"mode": mode}))
        os.makedirs(dir_path, mode=int(mode, 8), exist_ok=True)
        return True

    def report(self):
        return {"domains": copy.deepcopy(self.domains), "lvm": {}, "lio": {}, "sessions": [], "links": self.links,
                "configs": []}  # fmt: skip

    def unexport(self, name, target_iqn):
        self.done.append((UNEXPORT, [name, target_iqn], {}))
        self.open.discard(name)
        return {"changed": True, "changes": [f"deleted target {target_iqn}"]}

    def logout(self, target, portal):
        self.done.append((LOGOUT, [target, portal], {}))
        return {"changed": True, "changes": [f"logged out of {target} on {portal}"]}


class Switch:
    """cmd.run_all of the real modules: the commands of the dom0 the fake publish is calling."""

    node = None

    def __call__(self, argv, python_shell=None, **kwargs):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        assert python_shell is False
        return {"pid": 1, "stdout": "", "stderr": "", **self.node.run(argv)}


class Cluster:
    """LocalClient.cmd: each dom0 runs the function as a minion would (full_return), a silent one not at all."""

    def __init__(self, dom0s, switch, node_context):
        self.dom0s, self.switch, self.node_context = dom0s, switch, node_context
        self.calls = []

    def __call__(self, tgt, fun, arg=(), timeout=None, tgt_type=None, full_return=False, kwarg=None):
        assert tgt_type == "list" and full_return is True and isinstance(timeout, int)
        self.calls.append((list(tgt), fun, copy.deepcopy(list(arg)), dict(kwarg or {}), timeout))
        out = {}
        for minion in tgt:
            dom0 = self.dom0s.get(minion)
            if dom0 is None or dom0.silent:
                continue
            if isinstance(fun, list):
                answers = [self.run(dom0, f, a, {}) for f, a in zip(fun, arg)]
                out[minion] = {"ret": {f: r for f, (r, _c) in zip(fun, answers)},
                               "retcode": {f: c for f, (_r, c) in zip(fun, answers)}}  # fmt: skip
            else:
                ret, code = self.run(dom0, fun, arg, kwarg or {})
                out[minion] = {"ret": ret, "retcode": code}
        return out

    def run(self, dom0, fun, args, kwargs):
        function = dom0.functions().get(fun)
        if function is None:
            return f"'{fun}' is not available.", 254
        self.switch.node = dom0
        self.node_context.clear()
        dom0.retcode = 0
        try:
            ret = function(*args, **kwargs)
        except CommandExecutionError as exc:
            return f"ERROR: {exc}", 1
        except SaltInvocationError as exc:
            return f"ERROR executing '{fun}': {exc}", 1
        return json.loads(json.dumps(ret)), self.node_context.pop("retcode", 0) or dom0.retcode

    def funs(self, minion=None):
        return [fun for tgt, fun, _a, _k, _t in self.calls if minion is None or minion in tgt]

    def of(self, fun):
        """(args, kwarg) of each call of ``fun``."""
        return [(args, kwarg) for _tgt, f, args, kwarg, _t in self.calls if f == fun]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def context():
    return {}


@pytest.fixture
def node_context():
    return {}


@pytest.fixture
def jid_event():
    return MagicMock()


@pytest.fixture
def switch():
    return Switch()


@pytest.fixture
def opts(tmp_path):
    return dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"))  # fmt: skip


@pytest.fixture
def configure_loader_modules(context, node_context, jid_event, opts, switch):
    lvm_funs = {f"xencluster_lvm.{f}": getattr(lvm_mod, f)
                for f in ("report", "parse_size", "snapshot_create", "snapshot_remove", "snapshot_usage")}  # fmt: skip
    return {
        runner: {"__opts__": opts, "__context__": context, "__jid_event__": jid_event},
        lvm_mod: {"__salt__": {"cmd.run_all": switch}},
        backup_mod: {"__salt__": {"cmd.run_all": switch, **lvm_funs}, "__context__": node_context},
    }


@pytest.fixture
def bus(monkeypatch):
    bus = Bus()
    monkeypatch.setattr(runner.salt.utils.event, "get_master_event", bus)
    return bus


@pytest.fixture
def host(tmp_path, monkeypatch):
    """The backup root, private mount base, empty /sys/block and a fixed clock (tmp_path)."""
    root = tmp_path / "srv-xencluster-backup"
    monkeypatch.setattr(runner, "BACKUP_ROOT", str(root))
    monkeypatch.setattr(backup_mod, "MOUNT_BASE", str(tmp_path / "run"))
    monkeypatch.setattr(backup_mod, "SYS_BLOCK", str(tmp_path / "sys"))
    (tmp_path / "sys").mkdir()
    monkeypatch.setattr(backup_mod, "_now", lambda: NOW)
    # the root-filesystem check compares with a directory on another filesystem than tmp_path
    monkeypatch.setattr(backup_mod, "ROOT_FS", "/proc")
    # udev as the formula leaves a dom0: no md auto-assembly (the check has its own module tests)
    monkeypatch.setattr(backup_mod, "UDEV_RULES_LIB", ())
    return {"root": str(root), "dest": f"{root}/bk1/db1/root"}


@pytest.fixture
def dom0s(monkeypatch, host):
    """node1: web1's and db1's legs, the volume of bk1 (ext4, mounted), web1 running; node2: db1 running."""
    node1 = Dom0("node1", {"web1.root.node1": "ext4", "web1.data.node1": "xfs", "db1.root.node1": "ext4"},
                 host["root"])  # fmt: skip
    node2 = Dom0("node2", {"web1.root.node2": "ext4", "web1.data.node2": "xfs", "db1.root.node2": "ext4"},
                 host["root"])  # fmt: skip
    node1.volume = ("xcbackup-bk1", "ext4")
    node1.mount_volume()
    node1.domains = running(monkeypatch, "web1")
    node2.domains = running(monkeypatch, "db1")
    return {"node1": node1, "node2": node2}


def make_cluster(monkeypatch, raw, dom0s, switch, node_context):
    """The model ``raw`` as the master reads it; LocalClient answering from ``dom0s``."""
    cluster = Cluster(dom0s, switch, node_context)
    model = model_mod.validate(copy.deepcopy(raw))
    for name, dom0 in dom0s.items():
        dom0.links = node_links(model, name)
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=cluster)))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node2", copy.deepcopy(raw)))
    monkeypatch.setattr(runner, "_validate", lambda r: model_mod.validate(copy.deepcopy(r)))
    monkeypatch.setattr(runner, "_accepted", set)  # every dom0 has an accepted key
    return cluster


@pytest.fixture
def cluster(monkeypatch, dom0s, switch, node_context, bus):
    return make_cluster(monkeypatch, with_backup(), dom0s, switch, node_context)


def progress(jid_event):
    return [c.args[0]["message"] for c in jid_event.fire_event.call_args_list]


def by_guest(result):
    return {entry["guest"]: entry for entry in result["guests"]}


# --- agreement with the node module -----------------------------------------------------------


def test_the_runner_knows_what_the_node_module_knows():
    assert set(runner.BACKUP_FILESYSTEMS) == set(backup_mod.SUPPORTED)
    assert set(runner.BACKUP_JOURNALS) == set(backup_mod.JOURNAL_MODES)
    assert runner._BACKUP_NAME.pattern == backup_mod._STAMP_RE.pattern and runner.LATEST == backup_mod.LATEST
    assert ",".join(runner.BACKUP_MOUNT_OPTIONS) == backup_mod._SAFE
    assert set(runner.BACKUP_FILESYSTEMS) | {"btrfs", "swap", "none"} == set(model_mod.FILESYSTEMS)


def test_the_refusals_a_run_settles_are_the_node_modules_own_words(tmp_path):
    dest = str(tmp_path / "bk1" / "db1" / "root")
    missing = backup_mod._dest_problems(dest, {"exists": False}, False)
    on_root = backup_mod._dest_problems(dest, {"exists": True, "realpath_ok": True, "on_root_fs": True,
                                               "lock": None}, False)  # fmt: skip
    vol = {"state": "to_mount"}
    assert runner._cleared_by_run(missing + on_root, dest, vol, True) == ([], missing + on_root)
    assert runner._cleared_by_run(missing + on_root, dest, {"state": "mounted"}, True) == (on_root, missing)
    assert runner._cleared_by_run(missing, dest, vol, False) == (missing, [])  # a real run settles nothing


# --- the plan from the model (pure) -------------------------------------------------------------


def test_the_node_is_the_leg_owner_that_holds_the_target():
    model = model_mod.validate(with_backup())
    plan = runner.backup_plan(model, "db1")
    assert (plan["target"], plan["node"], plan["problems"], plan["opted_out"]) == ("bk1", "node1", [], False)
    [disk] = plan["disks"]
    assert disk == {"disk": "root", "filesystem": "ext4", "vg": "xcvg", "lv": "db1.root.node1",
                    "partner": "/dev/xencluster/db1.root.node2",
                    "dest": "/srv/xencluster-backup/bk1/db1/root"}  # fmt: skip
    model = model_mod.validate(with_backup(bk2={"node": "node2", "vg": "xcvg"}))
    plan = runner.backup_plan(model, "web1")
    assert plan["node"] == "node2" and [d["lv"] for d in plan["disks"]] == ["web1.root.node2", "web1.data.node2"]
    assert [d["filesystem"] for d in plan["disks"]] == ["ext4", "xfs"]


def test_a_target_on_a_third_node_is_refused_with_the_reason():
    model = model_mod.validate(with_backup(three_nodes(), bk3={"node": "node3", "vg": "xcvg"}))
    plan = runner.backup_plan(model, "web1")
    assert plan["node"] is None and plan["disks"] == [] and plan["opted_out"] is False
    assert plan["problems"] == [
        "backup target bk3 is on node3, which holds no leg of web1 (pair node1 and node2): a leg is backed up on "
        "its own node into a directory there (xencluster_backup writes locally), so the target must be on a node "
        "of the pair: point xencluster.guests.web1.backup at a target on node1 or node2"]  # fmt: skip


def test_skipped_disks_and_unsupported_filesystems():
    raw = with_backup()
    root, data = raw["guests"]["web1"]["disks"]
    data.update(filesystem="swap")
    plan = runner.backup_plan(model_mod.validate(copy.deepcopy(raw)), "web1")
    assert plan["skipped_disks"] == [{"disk": "data", "why": "swap is never backed up"}]
    assert [d["disk"] for d in plan["disks"]] == ["root"] and plan["problems"] == []
    data.update(filesystem="btrfs")
    root.update(filesystem="none")
    plan = runner.backup_plan(model_mod.validate(copy.deepcopy(raw)), "web1")
    assert plan["problems"] == [
        "disk root: the model says it holds no filesystem (xencluster.guests.web1.disks.root.filesystem: none): "
        "give its filesystem (ext2, ext3, ext4 or xfs) or set xencluster.guests.web1.disks.root.backup: false",
        "disk data: btrfs is not supported (only ext2, ext3, ext4 and xfs): set "
        "xencluster.guests.web1.disks.data.backup: false"]  # fmt: skip
    root.update(backup=False)
    data.update(backup=False)
    plan = runner.backup_plan(model_mod.validate(copy.deepcopy(raw)), "web1")
    assert plan["opted_out"] is True
    assert plan["problems"] == ["no disk of web1 is backed up (root: backup: false in the model, data: backup: "
                                "false in the model)"]  # fmt: skip


# --- arguments and refusals before any publish --------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, why",
    [
        ((), {}, "name a guest (salt-run xencluster.backup web1) or back up every guest with all=True"),
        (("db1",), {"all": True}, "name one guest or give all=True, not both (guest 'db1' and all=True)"),
        (("DB1",), {}, "invalid guest name 'DB1'"),
        (("db1; reboot",), {}, "invalid guest name 'db1; reboot'"),
        ((), {"all": "yes"}, "all must be True or False: 'yes'"),
        (("db1",), {"dry_run": 1}, "dry_run must be True or False: 1"),
        (("db1",), {"timeout": 0}, "timeout must be a whole number of seconds from 1 to 86400: 0"),
        (("db1",), {"check_timeout": 601}, "check_timeout must be a whole number of seconds from 1 to 600"),
        (("db1",), {"journal": "noload"}, "journal must be one of replay, skip: 'noload'"),
        (("db1",), {"snapshot_size": "0%"}, "snapshot_size must be 1% to 100% of the leg or a size (2G): '0%'"),
        (("db1",), {"snapshot_size": "1G;rm"}, "snapshot_size must be"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_before_anything_is_published(cluster, bus, context, args, kwargs, why):
    result = runner.backup(*args, **kwargs)
    assert (result["result"], result["retcode"], result["guests"]) == (False, 1, []) and context["retcode"] == 1
    assert result["message"].startswith(f"not backing up: {why}"), result["message"]
    assert cluster.calls == [] and bus.events == []
    json.dumps(result)


def test_an_unknown_guest(cluster, context):
    result = runner.backup("nope")
    assert result["message"] == "not backing up: no guest nope in the model (pillar of node2; guests: db1, web1)"
    assert cluster.calls == [] and context["retcode"] == 1


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda raw: raw["guests"]["db1"].update(backup=False),
         "db1 has no backup target: the model sets xencluster.guests.db1.backup: false, or neither it nor "
         "xencluster.backup.default names one"),
        (lambda raw: raw.pop("backup"), "db1 has no backup target"),
        (lambda raw: raw["guests"]["db1"]["disks"][0].update(filesystem="none"),
         "disk root: the model says it holds no filesystem"),
        (lambda raw: raw["guests"]["db1"]["disks"][0].update(backup=False),
         "no disk of db1 is backed up (root: backup: false in the model)"),
    ],
)  # fmt: skip
def test_model_refusals_publish_nothing_but_are_heard(monkeypatch, dom0s, switch, node_context, bus, context,
                                                      jid_event, change, why):  # fmt: skip
    raw = with_backup()
    change(raw)
    cluster = make_cluster(monkeypatch, raw, dom0s, switch, node_context)
    result = runner.backup("db1")
    [entry] = result["guests"]
    assert entry["outcome"] == "refused" and entry["message"].startswith(f"not backing up db1: {why}")
    assert (result["refused"], result["retcode"], context["retcode"]) == (["db1"], 1, 1)
    assert cluster.calls == []  # nothing published, nothing changed
    assert bus.tags() == ["xencluster/backup/db1/failed"] and bus.events[0][1] == entry
    assert progress(jid_event) == [entry["message"], "backup: 1 refused (db1)"]


def test_a_third_node_target_refuses_before_any_publish(monkeypatch, dom0s, switch, node_context, bus):
    raw = with_backup(three_nodes(), bk3={"node": "node3", "vg": "xcvg"})
    cluster = make_cluster(monkeypatch, raw, dom0s, switch, node_context)
    result = runner.backup("web1", dry_run=True)
    assert result["guests"][0]["message"].startswith("would not back up web1: backup target bk3 is on node3, "
                                                     "which holds no leg of web1 (pair node1 and node2)")
    assert cluster.calls == [] and bus.events == [] and result["retcode"] == 1


# --- the backup volume ---------------------------------------------------------------------------


def unmount(dom0):
    del dom0.mounts[f"{dom0.root}/bk1"]


@pytest.mark.parametrize(
    "setup, why",
    [
        (lambda n: setattr(n, "volume", None),
         "the backup volume xcvg/xcbackup-bk1 of target bk1 is missing on node1: create it there once (salt node1 "
         "xencluster_lvm.lv_create xcvg xcbackup-bk1 <size>, then mkfs.ext4 /dev/xcvg/xcbackup-bk1); backup never "
         "creates it"),
        (lambda n: (unmount(n), setattr(n, "volume", ("xcbackup-bk1", None))),
         "the backup volume /dev/xcvg/xcbackup-bk1 on node1 holds no filesystem: make one (mkfs.ext4 "
         "/dev/xcvg/xcbackup-bk1)"),
        (lambda n: (unmount(n), setattr(n, "volume", ("xcbackup-bk1", "vfat"))),
         "the backup volume /dev/xcvg/xcbackup-bk1 on node1 holds vfat: backups need ext4 or xfs (hard links, "
         "ACLs, xattrs)"),
        (lambda n: n.mounts[f"{n.root}/bk1"].update(opts=["rw", "nosuid", "relatime"]),
         "the backup volume is mounted at {root}/bk1 on node1 without nodev,noexec: it holds the guests' files "
         "with their owners and modes; remount it (mount -o remount,nodev,nosuid,noexec {root}/bk1)"),
        (lambda n: n.mounts[f"{n.root}/bk1"].update(device="/dev/vdb1"),
         "{root}/bk1 on node1 has /dev/vdb1 mounted, not the backup volume /dev/xcvg/xcbackup-bk1"),
        (lambda n: n.mounts.update({"/mnt": n.mounts.pop(f"{n.root}/bk1")}),
         "the backup volume /dev/xcvg/xcbackup-bk1 is mounted at /mnt on node1, not at {root}/bk1: unmount it there"),
        (lambda n: setattr(n, "silent", True), "node1 (minion node1) did not answer"),
    ],
)  # fmt: skip
def test_a_volume_that_will_not_do_refuses_before_any_change(cluster, dom0s, host, bus, setup, why):
    node1 = dom0s["node1"]
    setup(node1)
    result = runner.backup("db1")
    [entry] = result["guests"]
    assert entry["outcome"] == "refused" and result["retcode"] == 1
    assert entry["message"] == f"not backing up db1: {why.format(root=host['root'])}", entry["message"]
    assert cluster.funs() == [VOLUME]  # the one round; no mount, no mkdir, no backup_leg
    assert node1.done == [] and not [c for c in node1.commands if c[0] in ("lvcreate", "mdadm")]
    assert bus.tags() == ["xencluster/backup/db1/failed"]


def test_a_node_without_a_key_is_not_asked(cluster, monkeypatch):
    monkeypatch.setattr(runner, "_accepted", lambda minions: set(minions) - {"node1"})
    result = runner.backup("db1", dry_run=True)
    assert result["guests"][0]["message"] == "would not back up db1: node1 (minion node1) did not answer"
    assert cluster.calls == []  # a publish matching no minion would print a notice on salt-run's stdout


def test_an_unmounted_volume_is_mounted_safely_first(cluster, dom0s, host, jid_event):
    node1 = dom0s["node1"]
    unmount(node1)
    result = runner.backup("db1")
    assert result["retcode"] == 0, result
    assert node1.done[:2] == [
        (MOUNT, [f"{host['root']}/bk1", "/dev/xcvg/xcbackup-bk1"],
         {"mkmnt": True, "fstype": "ext4", "opts": "nodev,nosuid,noexec"}),
        (MKDIR, [host["dest"]], {"mode": "0700"}),
    ]  # fmt: skip
    assert result["guests"][0]["volume"] == {"device": "/dev/xcvg/xcbackup-bk1", "mountpoint": f"{host['root']}/bk1",
                                             "state": "mounted", "mounted_now": True}  # fmt: skip
    assert progress(jid_event)[0] == f"mounted the backup volume /dev/xcvg/xcbackup-bk1 at {host['root']}/bk1 on node1"


# --- a backup --------------------------------------------------------------------------------------


def test_a_backup_of_db1_every_step(cluster, dom0s, host, bus, jid_event, context):
    result = runner.backup("db1", timeout=900, check_timeout=7)
    assert (result["result"], result["retcode"], result["backed_up"], context) == (True, 0, ["db1"], {})
    [entry] = result["guests"]
    assert (entry["outcome"], entry["node"], entry["target"]) == ("backed_up", "node1", "bk1")
    assert entry["runs_on_backup_node"] is False and entry["warnings"] == []  # db1 runs on node2
    [disk] = entry["disks"]
    dest = host["dest"]
    assert (disk["leg"], disk["node"], disk["dest"], disk["backup"], disk["path"]) == (
        "db1.root.node1", "node1", dest, STAMP, f"{dest}/{STAMP}")  # fmt: skip
    # rsync's own counters (rsync.backup1): 38 files, 32 regular files sent
    assert (disk["files"], disk["files_transferred"], disk["bytes_transferred"], disk["bytes_sent"]) == (
        38, 32, 8411613, 8411613)  # fmt: skip
    # 10% of the leg (its row: the open 512 MiB LV of the recording), 37.66% full after the copy
    assert disk["snapshot"] == {"name": "db1.root.node1-xcbk", "size": 536870912 // 10, "usage_percent": 37.66,
                                "full": False}  # fmt: skip
    assert disk["overflow"] is False and disk["error"] is None and disk["result"] is True
    assert [(c["step"], c["ok"]) for c in disk["cleanup"]] == [
        ("umount", True), ("rmdir mount point", True), ("losetup --detach", True), ("snapshot_remove", True)]
    assert disk["prune"] == {"retention": {"daily": 2}, "kept": [STAMP], "deleted": [], "stale": []}
    # the publishes: one round, the directory, the node's plan, the backup, the retention
    assert cluster.funs() == [VOLUME, MKDIR, BACKUP, BACKUP, PRUNE]
    leg = ["xcvg", "db1.root.node1", dest]
    common = {"fstype": "ext4", "partner": "/dev/xencluster/db1.root.node2", "journal": "replay",
              "snapshot_size": "10%"}  # fmt: skip
    assert cluster.of(BACKUP) == [(leg, {**common, "dry_run": True}), (leg, {**common, "dry_run": False})]
    assert cluster.of(PRUNE) == [([dest], {"daily": 2})]
    assert [c[4] for c in cluster.calls] == [7, 7, 7, 900, 67]
    assert os.readlink(f"{dest}/latest") == STAMP and not dom0s["node1"].snapshots
    assert dom0s["node2"].commands == []  # the guest's host did no backup work
    assert bus.tags() == ["xencluster/backup/db1/started", "xencluster/backup/db1/finished"]
    assert bus.events[0][1] == {"guest": "db1", "node": "node1", "target": "bk1", "disks": ["root"]}
    assert bus.events[1][1] == entry
    assert progress(jid_event) == [
        "db1: backing up 1 disk(s) on node1 (target bk1)",
        f"db1/root: {STAMP} on node1, 32 of 38 files (8411613 bytes) moved in {disk['duration_s']} s",
        "backup: 1 backed up (db1)",
    ]  # fmt: skip
    json.dumps(result)


def test_prune_applies_the_models_retention(cluster, host):
    days = ["20261123T081500Z", "20261122T081500Z", "20261121T081500Z"]
    os.makedirs(host["dest"])
    _layout(host["dest"], days, latest=days[0])
    [disk] = runner.backup("db1")["guests"][0]["disks"]
    assert disk["prune"] == {"retention": {"daily": 2}, "kept": [days[0], STAMP], "deleted": days[1:], "stale": []}
    assert sorted(n for n in os.listdir(host["dest"]) if not n.startswith(".")) == sorted(
        [STAMP, f"{STAMP}.json", days[0], f"{days[0]}.json", "latest"])  # fmt: skip


def test_a_snapshot_that_overflows_fails_the_disk_with_its_usage(cluster, dom0s, host, bus, jid_event, context):
    dom0s["node1"].overflow.add("db1.root.node1")
    result = runner.backup("db1")
    [entry] = result["guests"]
    [disk] = entry["disks"]
    assert (entry["outcome"], result["retcode"], context["retcode"], result["failed"]) == ("failed", 1, 1, ["db1"])
    assert disk["result"] is False and disk["overflow"] is True and disk["backup"] is None and disk["path"] is None
    assert disk["snapshot"]["usage_percent"] == 100.0 and disk["snapshot"]["full"] is True
    assert disk["error"].startswith("snapshot xcvg/db1.root.node1-xcbk filled up during the backup (100.0%)")
    assert all(c["ok"] for c in disk["cleanup"]) and not dom0s["node1"].snapshots  # removed all the same
    assert PRUNE not in cluster.funs() and not os.path.lexists(f"{host['dest']}/latest")
    assert bus.tags() == ["xencluster/backup/db1/started", "xencluster/backup/db1/failed"]
    assert progress(jid_event)[1] == f"db1/root: FAILED (snapshot OVERFLOW, 100.0% full): {disk['error']}"
    assert entry["message"] == "db1: 1 of 1 disk(s) failed (root)"


def test_one_failing_disk_of_two_fails_the_guest_and_the_other_is_kept(cluster, dom0s, bus):
    dom0s["node1"].overflow.add("web1.data.node1")
    result = runner.backup("web1")
    [entry] = result["guests"]
    root, data = entry["disks"]
    assert (root["result"], root["backup"], data["result"], data["overflow"]) == (True, STAMP, False, True)
    assert entry["outcome"] == "failed" and entry["message"] == "web1: 1 of 2 disk(s) failed (data)"
    assert result["retcode"] == 1 and cluster.funs().count(PRUNE) == 1  # only the disk that was backed up


def test_a_guest_running_on_the_backup_node_is_backed_up_with_a_warning(cluster, dom0s):
    result = runner.backup("web1")
    [entry] = result["guests"]
    assert entry["outcome"] == "backed_up" and entry["runs_on_backup_node"] is True
    assert entry["warnings"] == ["web1 runs on node1, the node that backs it up: the backup I/O lands on its host "
                                 "(the other node of its pair has no backup volume)"]  # fmt: skip
    assert [(d["disk"], d["leg"], d["result"]) for d in entry["disks"]] == [
        ("root", "web1.root.node1", True), ("data", "web1.data.node1", True)]  # fmt: skip
    assert [c[:3] for c in dom0s["node1"].commands if c[0] == "mount"][1][:3] == ["mount", "-t", "xfs"]


def test_a_stale_leg_refuses_the_guest_before_its_first_snapshot(cluster, dom0s, bus):
    node1 = dom0s["node1"]
    node1.examine["/dev/xencluster/db1.root.node2"] = "examine.partner-failed-0"
    result = runner.backup("db1")
    [entry] = result["guests"]
    assert entry["outcome"] == "refused" and "this leg is stale, back up the partner's leg instead" in entry["message"]
    assert entry["message"].startswith("not backing up db1: disk root: the partner leg's superblock does not count")
    assert cluster.funs() == [VOLUME, MKDIR, BACKUP] and cluster.of(BACKUP)[0][1]["dry_run"] is True
    assert "lvcreate" not in [c[0] for c in node1.commands]
    assert bus.tags() == ["xencluster/backup/db1/failed"]


def test_a_backup_that_does_not_answer(cluster, dom0s, monkeypatch):
    real = Cluster.__call__

    def lost(self, tgt, fun, arg=(), **kwargs):
        out = real(self, tgt, fun, arg, **kwargs)
        if fun == BACKUP and not kwargs["kwarg"]["dry_run"]:
            return {}  # node1 ran it, but its answer did not come within the timeout
        return out

    monkeypatch.setattr(Cluster, "__call__", lost)
    [disk] = runner.backup("db1", timeout=60)["guests"][0]["disks"]
    assert disk["result"] is False and disk["prune"] is None and disk["error"] == (
        f"node1 did not answer {BACKUP} within 60 s: whether it finished is not known (a snapshot left behind "
        "shows in salt-run xencluster.verify as ELEGSNAPSHOT)")  # fmt: skip


def test_a_dry_run_asks_the_node_and_changes_nothing(cluster, dom0s, host, bus, jid_event, context):
    node1 = dom0s["node1"]
    unmount(node1)
    result = runner.backup("db1", dry_run=True)
    [entry] = result["guests"]
    assert (entry["outcome"], result["retcode"], result["dry_run"], context) == ("would_back_up", 0, True, {})
    assert entry["message"] == (f"would back up 1 disk(s) of db1 on node1 after mounting /dev/xcvg/xcbackup-bk1 at "
                                f"{host['root']}/bk1")  # fmt: skip
    [disk] = entry["disks"]
    assert disk["refused"] == [] and disk["snapshot"]["name"] == "db1.root.node1-xcbk"
    assert disk["cleared_by_run"] == [f"backup directory {host['dest']} does not exist (or is a symlink): mount the "
                                      "backup volume and create it"]  # fmt: skip
    assert cluster.funs() == [VOLUME, BACKUP] and cluster.of(BACKUP)[0][1]["dry_run"] is True
    assert node1.done == [] and not os.path.exists(f"{host['root']}/bk1/db1")
    assert [c[0] for c in node1.commands] == ["pvs", "vgs", "lvs", "pvs", "vgs", "lvs", "mdadm", "mdadm"]
    assert bus.events == [] and jid_event.fire_event.call_count == 0


def test_a_dry_run_shows_the_nodes_refusals(cluster, dom0s, bus):
    dom0s["node1"].examine["/dev/xcvg/db1.root.node1"] = "examine.recovering"
    result = runner.backup("db1", dry_run=True)
    [entry] = result["guests"]
    assert entry["outcome"] == "refused" and entry["message"].startswith("would not back up db1: disk root: md "
                                                                         "features in the way: recovery in progress")
    assert entry["disks"][0]["refused"][0].startswith("md features in the way")
    assert bus.events == [] and result["retcode"] == 1


def test_all_guests_one_at_a_time(monkeypatch, dom0s, switch, node_context, bus, jid_event):
    raw = with_backup()
    raw["guests"]["web1"]["backup"] = False
    raw["guests"]["app1"] = copy.deepcopy(raw["guests"]["db1"])
    raw["guests"]["app1"]["interfaces"][0]["mac"] = "00:16:3e:00:03:01"
    raw["guests"]["app1"]["disks"][0]["filesystem"] = "none"
    cluster = make_cluster(monkeypatch, raw, dom0s, switch, node_context)
    result = runner.backup(all=True)
    guests = by_guest(result)
    assert [e["guest"] for e in result["guests"]] == ["app1", "db1", "web1"]
    assert (guests["app1"]["outcome"], guests["db1"]["outcome"], guests["web1"]["outcome"]) == (
        "refused", "backed_up", "skipped")  # fmt: skip
    assert guests["web1"]["message"].startswith("web1: web1 has no backup target")
    assert (result["backed_up"], result["refused"], result["skipped"], result["retcode"]) == (["db1"], ["app1"],
                                                                                            ["web1"], 1)
    assert result["message"] == "backup: 1 backed up (db1), 1 refused (app1), 1 skipped (web1)"
    assert cluster.funs().count(VOLUME) == 1  # one round for the one backup node
    assert bus.tags() == ["xencluster/backup/app1/failed", "xencluster/backup/db1/started",
                          "xencluster/backup/db1/finished"]  # fmt: skip


def test_all_guests_when_none_has_a_target(monkeypatch, dom0s, switch, node_context, bus):
    cluster = make_cluster(monkeypatch, RAW, dom0s, switch, node_context)
    result = runner.backup(all=True)
    assert (result["result"], result["retcode"], result["skipped"]) == (True, 0, ["db1", "web1"])
    assert result["message"] == "no guest of the model has anything to back up (skipped: db1, web1)"
    assert cluster.calls == [] and bus.events == []


# --- restore_backup ----------------------------------------------------------------------------------


@pytest.fixture
def stored(dom0s, host):
    """db1 stopped everywhere; one backup of db1/root (ext4, label root) on node1's volume."""
    dom0s["node2"].domains = {}
    dest = host["dest"]
    os.makedirs(dest)
    _layout(dest, [STAMP], latest=STAMP)
    uuid = backup_mod.parse_blkid(rec("blkid.ext4")["stdout"])["UUID"]
    pathlib.Path(dest, f"{STAMP}.json").write_text(json.dumps({"filesystem": {"type": "ext4", "uuid": uuid,
                                                                              "label": "root"}}))
    dom0s["node1"].rsync = "rsync.restore-again"
    dom0s["node2"].examine["/dev/xcvg/db1.root.node2"] = "examine.partner-ok"  # device 1 of the array
    return dest


def restore(**kwargs):
    kwargs.setdefault("check_timeout", 7)
    return runner.restore_backup("db1", "root", **kwargs)


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({}, "not restoring: restore_backup replaces the filesystem on one leg of db1/root and makes the other leg "
             "stale: stop db1 everywhere, then confirm=True (dry_run=True shows the plan)"),
        ({"confirm": "yes"}, "not restoring: confirm must be True or False: 'yes'"),
        ({"backup": "yesterday", "confirm": True}, "not restoring: backup must be latest or a backup name like "
                                                   "20261124T081500Z: 'yesterday'"),
        ({"into": "web2", "confirm": True}, "not restoring: into must be <guest>/<disk> (web2/root): 'web2'"),
        ({"into": "web2/../x", "confirm": True}, "not restoring: into must be <guest>/<disk>"),
        ({"node": "Node1", "confirm": True}, "not restoring: invalid node name 'Node1'"),
        ({"timeout": 86401, "confirm": True}, "not restoring: timeout must be a whole number of seconds"),
    ],
)  # fmt: skip
def test_restore_refusals_before_anything_is_published(cluster, stored, bus, context, kwargs, why):
    result = restore(**kwargs)
    assert (result["result"], result["outcome"], result["retcode"], context["retcode"]) == (False, "refused", 1, 1)
    assert result["message"].startswith(why), result["message"]
    assert cluster.calls == [] and bus.events == [] and result["steps"] == []
    json.dumps(result)


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"node": "node2"}, "would not restore: the backups of db1/root are on node1 (target bk1) and restore_leg "
                            "reads them there: only node1's leg can be written, not node2's"),
        ({"into": "db1/data"}, "would not restore: db1 has no disk data (disks: root)"),
        ({"into": "nope/root"}, "would not restore: no guest nope in the model (guests: db1, web1)"),
    ],
)  # fmt: skip
def test_restore_plan_refusals(cluster, stored, kwargs, why):
    result = restore(dry_run=True, **kwargs)
    assert result["outcome"] == "refused" and result["message"] == why and cluster.calls == []


def test_restore_refused_while_the_guest_runs(cluster, stored, dom0s, bus):
    dom0s["node2"].domains = running(pytest.MonkeyPatch(), "db1")
    result = restore(confirm=True)
    assert result["outcome"] == "refused" and result["retcode"] == 1
    assert result["message"] == "not restoring: db1 already runs on node2 (blocked): stop it everywhere first"
    assert cluster.funs() == [[REPORT, INFO]] and cluster.calls[0][0] == ["node1", "node2"]  # the recover round
    assert result["checks"] == [{"check": "runs_nowhere", "ok": False, "message": result["message"][15:]}]
    assert dom0s["node1"].done == dom0s["node2"].done == [] and bus.events == []


def test_restore_refused_when_a_node_cannot_tell(cluster, stored, dom0s):
    dom0s["node2"].silent = True
    result = restore(confirm=True)
    assert result["message"] == ("not restoring: every node must tell its domains, so that db1 is known to run "
                                 "nowhere: node2 (minion node2) did not answer")  # fmt: skip


def test_restore_into_a_new_pair_whose_legs_do_not_exist(monkeypatch, dom0s, switch, node_context, stored, bus):
    raw = with_backup()
    raw["guests"]["db2"] = copy.deepcopy(raw["guests"]["db1"])
    raw["guests"]["db2"]["interfaces"][0]["mac"] = "00:16:3e:00:02:02"
    cluster = make_cluster(monkeypatch, raw, dom0s, switch, node_context)
    del dom0s["node1"].links["db2.root.node1"]  # the leg states have not run for db2 yet
    result = restore(into="db2/root", dry_run=True)
    assert result["message"] == (
        "would not restore: leg db2.root.node1 on node1: /dev/xencluster/db2.root.node1 is missing: the legs of a "
        "new pair are made by the leg states (state.apply xencluster.storage on node1 and node2), and its guest "
        "must have made its md RAID1 on them once")  # fmt: skip
    assert (result["into"], result["leg"], result["other_leg"]) == (
        {"guest": "db2", "disk": "root"}, "db2.root.node1", "db2.root.node2")  # fmt: skip
    assert cluster.funs() == [[REPORT, INFO]]


def test_restore_dry_run_returns_the_plan(cluster, stored, dom0s, bus, jid_event, context):
    result = restore(dry_run=True)
    assert (result["outcome"], result["retcode"], result["dry_run"], context) == ("would_restore", 0, True, {})
    assert result["message"] == ("would restore 20261124T081500Z of db1/root into db1.root.node1 on node1 and "
                                 "invalidate db1.root.node2 on node2")  # fmt: skip
    assert (result["node"], result["leg"], result["other_leg"], result["backup"]) == (
        "node1", "db1.root.node1", "db1.root.node2", "latest")  # fmt: skip
    assert result["plan"]["backup"] == STAMP and result["plan"]["fstype"] == "ext4"
    checks = {c["check"]: c for c in result["checks"]}
    assert list(checks) == ["runs_nowhere", "volume", "node_plans"] and all(c["ok"] for c in checks.values())
    # both legs are exported (open): the nodes say so, and the run would unexport them first
    assert checks["node_plans"]["message"] == (
        f"backup {STAMP} into db1.root.node1 (open now, unexported first: xcvg/db1.root.node1 is open: a guest, an "
        "md array, a mount or an LIO export uses it; stop the guest and unexport the leg first; xcvg/db1.root.node2 "
        "is open or LVM cannot tell: stop the guest and unexport the leg first)")  # fmt: skip
    assert cluster.funs() == [[REPORT, INFO], VOLUME, RESTORE, INVALIDATE]
    assert cluster.of(RESTORE) == [(["xcvg", "db1.root.node1", stored],
                                    {"backup": "latest", "overwrite": True, "mkfs": True, "dry_run": True})]
    assert cluster.of(INVALIDATE) == [(["xcvg", "db1.root.node2", UUID], {"dry_run": True})]
    assert dom0s["node1"].done == dom0s["node2"].done == [] and result["steps"] == []
    assert bus.events == [] and jid_event.fire_event.call_count == 0


def test_restore_takes_the_pair_out_of_service_restores_and_invalidates(cluster, stored, dom0s, bus, jid_event):
    result = restore(confirm=True, timeout=600)
    assert (result["outcome"], result["retcode"], result["result"]) == ("restored", 0, True), result["message"]
    node1, node2 = dom0s["node1"], dom0s["node2"]
    assert node2.done[:1] == [(LOGOUT, [f"{IQN}:db1.root.node1", "192.168.100.1:3260"], {})]
    assert node1.done == [(LOGOUT, [f"{IQN}:db1.root.node2", "192.168.100.2:3260"], {}),
                          (UNEXPORT, ["db1.root.node1", f"{IQN}:db1.root.node1"], {})]  # fmt: skip
    assert node2.done[1:] == [(UNEXPORT, ["db1.root.node2", f"{IQN}:db1.root.node2"], {})]
    assert [(s["node"], s["function"], s["ok"]) for s in result["steps"]] == [
        ("node2", LOGOUT, True), ("node1", LOGOUT, True), ("node1", UNEXPORT, True), ("node2", UNEXPORT, True),
        ("node1", RESTORE, True), ("node2", INVALIDATE, True)]  # fmt: skip
    assert cluster.of(RESTORE)[1] == (["xcvg", "db1.root.node1", stored], {"backup": STAMP, "overwrite": True,
                                                                          "mkfs": True})  # fmt: skip
    assert cluster.of(INVALIDATE)[1] == (["xcvg", "db1.root.node2", UUID], {})
    assert ["mdadm", "--zero-superblock", "/dev/xcvg/db1.root.node2"] in node2.commands
    assert result["restore"]["result"] is True and result["restore"]["rsync"]["deleted"] == 1
    assert [c for c in node1.commands if c[0] == "rsync"][0][-2] == f"{stored}/{STAMP}/"
    assert result["next"] == [
        "export both legs again and log the partners back in: salt -L node1,node2 state.apply xencluster.storage "
        "(xencluster_leg.node_legs)",
        "start db1 (its xl config is unchanged): its md RAID1 comes up degraded on db1.root.node1, the restored "
        "leg; db1.root.node2 carries no md superblock any more",
        "inside db1, add the device of db1.root.node2 back to that array (salt db1 xencluster_md.re_add <md> "
        "<device> allow_full_resync=True): md copies the restored leg onto it in full",
    ]  # fmt: skip
    assert bus.tags() == ["xencluster/restore_backup/db1/started", "xencluster/restore_backup/db1/finished"]
    assert bus.events[0][1] == {"guest": "db1", "backup": STAMP, "leg": "db1.root.node1",
                                "other_leg": "db1.root.node2"}  # fmt: skip
    assert progress(jid_event)[-1] == result["message"] and progress(jid_event)[0] == (
        "node2 logs out of db1.root.node1 (192.168.100.1:3260)")  # fmt: skip


def test_a_restore_the_node_refuses_changes_nothing(cluster, stored, dom0s, bus):
    result = restore(confirm=True, backup="20261101T000000Z")
    assert result["outcome"] == "refused"
    assert result["message"] == f"not restoring: no backup 20261101T000000Z in {stored}"
    assert dom0s["node1"].done == dom0s["node2"].done == [] and bus.events == []


def test_a_restore_that_fails_while_writing_still_invalidates_the_other_leg(cluster, stored, dom0s, bus):
    dom0s["node1"].rsync = "rsync.enospc"
    result = restore(confirm=True)
    assert (result["outcome"], result["retcode"]) == ("failed", 1)
    assert [(s["function"], s["ok"]) for s in result["steps"]][-2:] == [(RESTORE, False), (INVALIDATE, True)]
    assert "No space left on device" in result["steps"][-2]["message"]
    assert result["next"][-1] == ("db1.root.node1 may hold a partial copy: run the same restore_backup again "
                                  "(confirm=True) before starting db1")  # fmt: skip
    assert bus.tags()[-1] == "xencluster/restore_backup/db1/failed"


def test_a_rerun_leaves_an_already_invalidated_leg_alone(cluster, stored, dom0s):
    dom0s["node2"].examine["/dev/xcvg/db1.root.node2"] = "examine.blank"  # an earlier run zeroed it
    result = restore(confirm=True)
    assert result["outcome"] == "restored", result["message"]
    assert [s["function"] for s in result["steps"]][-1] == RESTORE and len(cluster.of(INVALIDATE)) == 1
    assert "db1.root.node2 carries no md superblock already: nothing to invalidate" in result["checks"][-1]["message"]


def test_a_failed_unexport_stops_before_anything_is_written(cluster, stored, dom0s):
    def refuse(name, target_iqn):
        raise CommandExecutionError("another target still exports block/db1.root.node2")

    dom0s["node2"].unexport = refuse
    result = restore(confirm=True)
    assert result["outcome"] == "failed" and RESTORE not in [s["function"] for s in result["steps"]]
    assert result["message"] == ("not restoring into db1: node2 unexports db1.root.node2: node2: "
                                 f"{UNEXPORT} failed: ERROR: another target still exports block/db1.root.node2; "
                                 "nothing was written")  # fmt: skip
    assert result["next"][-1] == "nothing was written: db1 can start as before once its legs are exported"
