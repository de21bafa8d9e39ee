"""xencluster_leg: disk legs converged from one read of the host; plan (pure), test=True, apply.

The state runs against a fake dom0 (``Host``). Its four reads go through the
REAL execution modules and their parsers: ``xencluster_lvm.report`` (a fake
``cmd.run_all`` answering ``pvs``/``vgs`` with the recording
``lvm/lab-node1-snapshots`` and ``lvs`` with rows in that recording's format),
``xencluster_lio.exports`` (a fake ``rtslib_fb.RTSRoot().dump()`` built from
the objects of ``lio/lab-node1-xcl-export``), ``xencluster_iscsi.sessions``
(``iscsiadm -m session`` lines and sysfs laid out as in
``iscsi/lab-node2-xcl-session``; ``lab-node2-no-session`` verbatim when there
is none) and ``xencluster_disk.links`` (``/dev/xencluster`` and ``/sys`` under
``tmp_path``). The writes (``lv_create``, ``export``, ``login`` ...) are fakes
that change the Host as the tools would, so a second run sees the result;
the fake ``export`` asks the real ``xencluster_lio`` planner what it would do.
Renamed copies of recorded objects are SYNTHETIC (no many-leg host was recorded).
"""

import copy
import json
import os
import pathlib
import types

import pytest
import salt.utils.yaml
from rtslib_fb.utils import RTSLibError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_disk as disk_mod
from saltext.xencluster.modules import xencluster_iscsi as iscsi_mod
from saltext.xencluster.modules import xencluster_lio as lio_mod
from saltext.xencluster.modules import xencluster_lvm as lvm_mod
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.states import xencluster_leg as leg_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
REC = ROOT / "tests" / "recordings"
MiB = 1024**2
EXTENT = 4 * MiB
BASE = "iqn.2025-01.lab.xen"
P1, P2 = "192.168.100.1:3260", "192.168.100.2:3260"
SECRET, MUTUAL = "s3cret-chap-pass-1", "s3cret-mutual-pass-2"

LAB = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())["xencluster"]
LVM_REC = REC / "lvm" / "lab-node1-snapshots"
LIO_DUMP = json.loads((REC / "lio" / "lab-node1-xcl-export" / "dump.json").read_text())
NO_SESSION = REC / "iscsi" / "lab-node2-no-session"
ONE_SESSION = REC / "iscsi" / "lab-node2-xcl-session"
LV_ROW = next(
    r for r in json.loads((LVM_REC / "lvs.out").read_text())["report"][0]["lv"] if r["lv_name"] == "web1-disk0-a"
)
SESSION_LINE = (ONE_SESSION / "session.out").read_text().strip()

READS = ["xencluster_lvm.report", "xencluster_lio.exports", "xencluster_iscsi.sessions", "xencluster_disk.links"]
WRITES = ("lv_create", "lv_extend", "export", "save", "login", "logout", "set_chap", "rescan", "wait_for")

# node1's legs in the lab model (sorted by leg id, as node_view lists them)
OWNED1 = ["db1.root.node1", "web1.data.node1", "web1.root.node1"]
IMPORTED1 = ["db1.root.node2", "web1.data.node2", "web1.root.node2"]


def _answer(rec, command):
    meta = json.loads((rec / "meta.json").read_text())["commands"][command]
    return {"retcode": meta["rc"], "stdout": (rec / f"{command}.out").read_text(), "stderr": meta["stderr"]}


def _sd_name(i):
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(97 + r) + letters
    return f"sd{letters}"


class Host:
    """A fake dom0: its LVs, LIO objects, iSCSI sessions and stable links; counts every read."""

    def __init__(self, root, run_all, vg_free=None):
        self.root, self.run_all = root, run_all
        self.lvs = {}  # name -> {"size", "stripes", "stripe_size"}
        self.dump = {"fabric_modules": [], "storage_objects": [], "targets": []}
        self.sessions = []  # {"sid", "portal", "target", "state", "lun0", "recovery_tmo"}
        self.links = {}  # leg id -> "lv" | "iscsi" | "unknown"
        self.dumps = 0
        self.vg_free = vg_free
        self.lio_ops = []  # what the real xencluster_lio planner decided for each export call

    # --- what the tools would show ---

    def add_lv(self, name, size, stripes=1, stripe_size=0, link=True):
        self.lvs[name] = {"size": size, "stripes": stripes, "stripe_size": stripe_size}
        if link:
            self.links[name] = "lv"

    def add_export(self, leg, initiators, portals, chap=False, vg="xcvg", serial=None, auth=0):
        self.dump["storage_objects"] = [s for s in self.dump["storage_objects"] if s["name"] != leg]
        so = copy.deepcopy(LIO_DUMP["storage_objects"][0])
        so.update(name=leg, dev=f"/dev/{vg}/{leg}", wwn=serial or leg)
        self.dump["storage_objects"].append(so)
        target = f"{BASE}:{leg}"
        self.dump["targets"] = [t for t in self.dump["targets"] if t["wwn"] != target]
        t = copy.deepcopy(LIO_DUMP["targets"][0])
        t["wwn"] = target
        tpg = t["tpgs"][0]
        tpg["luns"][0]["storage_object"] = f"/backstores/block/{leg}"
        tpg["attributes"]["authentication"] = auth
        acl0 = tpg["node_acls"][0]
        tpg["node_acls"] = []
        for initiator in initiators:
            acl = dict(copy.deepcopy(acl0), node_wwn=initiator)
            if chap:
                acl.update(chap_userid="xc", chap_password="REDACTED")
            tpg["node_acls"].append(acl)
        portal0 = tpg["portals"][0]
        tpg["portals"] = [
            dict(portal0, ip_address=p.rsplit(":", 1)[0], port=int(p.rsplit(":", 1)[1])) for p in portals
        ]
        self.dump["targets"].append(t)

    def add_session(self, target, portal, state="LOGGED_IN", lun0=True, link=True,
                    recovery_tmo=model_mod.DEFAULT_REPLACEMENT_TIMEOUT):  # fmt: skip
        sid = max((s["sid"] for s in self.sessions), default=1) + 1
        self.sessions.append({"sid": sid, "portal": portal, "target": target, "state": state, "lun0": lun0,
                              "recovery_tmo": recovery_tmo})  # fmt: skip
        if link and lun0:
            self.links[target.split(":", 1)[1]] = "iscsi"
        return sid

    # --- laying it out for the real read modules ---

    def sync(self):
        """Write the current host into the fake cmd.run_all answers, sysfs and /dev."""
        ra = self.run_all
        ra.outputs["pvs"] = (LVM_REC / "pvs.out").read_text()
        vgs = json.loads((LVM_REC / "vgs.out").read_text())
        if getattr(self, "bare", False):  # a dom0 before its first highstate: no PV, no VG
            ra.outputs["pvs"] = json.dumps({"report": [{"pv": []}]})
            vgs["report"][0]["vg"] = []
        if self.vg_free is not None:
            vgs["report"][0]["vg"][0]["vg_free"] = str(self.vg_free)
        ra.outputs["vgs"] = json.dumps(vgs)
        rows = []
        for name, lv in sorted(self.lvs.items()):
            rows.append(dict(
                LV_ROW, lv_name=name, lv_size=str(lv["size"]), lv_path=f"/dev/xcvg/{name}", seg_size=str(lv["size"]),
                segtype="striped" if lv["stripes"] > 1 else "linear", stripes=str(lv["stripes"]),
                stripe_size=str(lv["stripe_size"]), lv_attr="-wi-ao----", origin="", data_percent="", lv_tags="",
            ))  # fmt: skip
        ra.outputs["lvs"] = json.dumps({"report": [{"lv": rows}]})

        self.syncs = getattr(self, "syncs", 0) + 1
        sys_sessions = self.root / f"sys-iscsi-{self.syncs}"  # a fresh sysfs per read
        sys_sessions.mkdir(parents=True)
        if not self.sessions:
            ra.outputs[tuple(iscsi_mod.SESSION_ARGV)] = _answer(NO_SESSION, "session")
        else:
            lines = []
            for i, s in enumerate(self.sessions):
                line = SESSION_LINE.replace("[2]", f"[{s['sid']}]")
                line = line.replace("192.168.100.1:3260", s["portal"]).replace(f"{BASE}:xcl-node1", s["target"])
                lines.append(line)
                base = sys_sessions / f"session{s['sid']}"
                base.mkdir()
                (base / "targetname").write_text(s["target"] + "\n")
                (base / "state").write_text(s["state"] + "\n")
                if s.get("recovery_tmo") is not None:
                    (base / "recovery_tmo").write_text(f"{s['recovery_tmo']}\n")
                if s["lun0"]:
                    h = s["sid"]
                    (base / "device" / f"target{h}:0:0" / f"{h}:0:0:0" / "block" / _sd_name(i)).mkdir(parents=True)
            ra.outputs[tuple(iscsi_mod.SESSION_ARGV)] = {"retcode": 0, "stdout": "\n".join(lines) + "\n"}
        iscsi_mod.SYSFS_SESSIONS = str(sys_sessions)
        self.sync_links()

    def sync_links(self):
        """Lay out /dev/xencluster and /sys as udev and the kernel would; only what changed since the last time."""
        dev, sys_root = self.root / "dev", self.root / "sys"
        if not (dev / "xencluster").is_dir():
            (dev / "xencluster").mkdir(parents=True)
            (sys_root / "block").mkdir(parents=True)
            self.laid = {}
        for leg, (kind, _kernel) in list(self.laid.items()):
            if self.links.get(leg) != kind:
                (dev / "xencluster" / leg).unlink()
                del self.laid[leg]
        for leg, kind in sorted(self.links.items()):
            if leg in self.laid:
                continue
            self.kernels = getattr(self, "kernels", 0) + 1
            i = self.kernels
            if kind == "lv":
                kernel = f"dm-{i}"
                device = sys_root / "devices" / "virtual" / "block" / kernel
                (device / "dm").mkdir(parents=True)
                (device / "dm" / "name").write_text(f"xcvg-{leg.replace('-', '--')}\n")
                (device / "dm" / "uuid").write_text("LVM-abcdefABCDEF0123456789\n")
            else:
                kernel = _sd_name(i)
                parent = sys_root / "devices" / "platform" / "host2"
                if kind == "iscsi":
                    parent = parent / f"session{i + 2}"
                device = parent / "target2:0:0" / "2:0:0:0" / "block" / kernel
                device.mkdir(parents=True)
                (device / "device").symlink_to("../..")
            (sys_root / "block" / kernel).symlink_to(os.path.relpath(device, sys_root / "block"))
            (dev / "xencluster" / leg).symlink_to(f"../{kernel}")
            self.laid[leg] = (kind, kernel)
        disk_mod.DEV_ROOT = str(dev / "xencluster")
        disk_mod.SYS_ROOT = str(sys_root)

    # --- the fake rtslib root (one dump per read) ---

    def rtslib(self):
        host = self

        class RTSRoot:
            def dump(self):
                host.dumps += 1
                return copy.deepcopy(host.dump)

        return types.SimpleNamespace(RTSRoot=RTSRoot, RTSLibError=RTSLibError)


class Writes:
    """Fake write functions of the execution modules: record the call, change the Host as the tool would."""

    def __init__(self, host):
        self.host, self.calls = host, []

    def _rec(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))

    def lv_create(self, vg, name, size, stripes=None, stripe_size=None, pvs=None, tags=None):
        self._rec("lv_create", vg, name, size, stripes=stripes, stripe_size=stripe_size, pvs=pvs)
        per = EXTENT * (stripes or 1)
        new = -(-size // per) * per
        self.host.add_lv(name, new, stripes or 1, stripe_size or 0)
        return {"vg": vg, "name": name, "size": new}

    def lv_extend(self, vg, name, size, pvs=None, allow_shrink=False, fs_already_shrunk=False):
        self._rec("lv_extend", vg, name, size, pvs=pvs)
        old = self.host.lvs[name]["size"]
        new = max(old, -(-size // EXTENT) * EXTENT)
        self.host.lvs[name]["size"] = new
        return {"old_size": old, "new_size": new}

    def export(self, name, device, target_iqn, initiators, portals, lun=None, chap=None, test=False, serial=None):
        self._rec("export", name, device, target_iqn, initiators, portals, lun=lun, chap=chap, serial=serial)
        # pylint: disable=protected-access
        spec = lio_mod._spec(name, device, target_iqn, initiators, portals, lun, chap, serial)
        actions, index = lio_mod._plan_export(self.host.dump, spec)
        self.host.lio_ops.append([a["op"] for a in actions])
        current = lio_mod.parse_dump(self.host.dump)
        tpg = (current["targets"].get(target_iqn) or {"tpgs": [{"acls": {}, "portals": []}]})["tpgs"][0]
        keep = [p for p in tpg["portals"] if p.rsplit(":", 1)[0] not in lio_mod.WILDCARDS]
        self.host.add_export(
            name, sorted(set(tpg["acls"]) | set(initiators)), sorted(set(keep) | set(portals)), chap=bool(chap),
            vg=device.split("/")[2], serial=serial, auth=1 if chap else 0,
        )  # fmt: skip
        changes = [lio_mod._describe(a) for a in actions]
        return {"changed": bool(actions), "changes": changes, "target": target_iqn, "backstore": name, "lun": index,
                "serial": serial}  # fmt: skip

    def save(self, path=lio_mod.SAVE_FILE):
        self._rec("save")
        return {"saved": path}

    def login(self, target, portal, wait=15, replacement_timeout=None):
        self._rec("login", target, portal, replacement_timeout=replacement_timeout)
        sid = self.host.add_session(target, portal, recovery_tmo=replacement_timeout or 120)
        session = {"sid": sid, "target": target, "portal": portal, "state": "LOGGED_IN", "devices": []}
        return {"changed": True, "changes": [f"logged in to {target} on {portal}"], "session": session}

    def set_replacement_timeout(self, target, portal, seconds):
        self._rec("set_replacement_timeout", target, portal, seconds)
        changes = []
        for s in self.host.sessions:
            if (s["target"], s["portal"]) == (target, portal) and s["recovery_tmo"] != seconds:
                changes.append(f"recovery_tmo of session {s['sid']} {s['recovery_tmo']} -> {seconds}")
                s["recovery_tmo"] = seconds
        return {"changed": bool(changes), "changes": changes}

    def logout(self, target, portal, delete=False):
        self._rec("logout", target, portal, delete=delete)
        self.host.sessions = [s for s in self.host.sessions if (s["target"], s["portal"]) != (target, portal)]
        return {"changed": True, "changes": [f"logged out of {target} on {portal}"]}

    def set_chap(self, target, portal, username, password, username_in=None, password_in=None):
        self._rec("set_chap", target, portal, username, password, username_in, password_in)
        return {"target": target, "portal": portal, "chap": True, "mutual": username_in is not None}

    def rescan(self):
        self._rec("rescan")
        for s in self.host.sessions:
            s["lun0"] = True
            self.host.links[s["target"].split(":", 1)[1]] = "iscsi"
        return []

    def wait_for(self, guest, disk, node, timeout=30):
        self._rec("wait_for", guest, disk, node, timeout=timeout)
        self.host.sync_links()
        return disk_mod.resolve(guest, disk, node)

    def names(self):
        return [c[0] for c in self.calls]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def pillar():
    return {"xencluster": copy.deepcopy(LAB)}


@pytest.fixture
def opts():
    return {"test": False, "id": "node1"}


@pytest.fixture
def grains():
    return {"id": "node1"}


@pytest.fixture
def context():
    return {}


@pytest.fixture
def host(tmp_path, run_all, monkeypatch):
    h = Host(tmp_path, run_all)
    monkeypatch.setattr(lio_mod, "rtslib_fb", h.rtslib())
    # The fake answers RTSRoot().dump(): keep exports() off a real configfs on LIO hosts.
    monkeypatch.setattr(lio_mod, "CONFIGFS_TARGET", str(tmp_path / "no-configfs"))
    monkeypatch.setattr(iscsi_mod, "SYSFS_SESSIONS", iscsi_mod.SYSFS_SESSIONS)  # restored after the test
    monkeypatch.setattr(disk_mod, "DEV_ROOT", disk_mod.DEV_ROOT)
    monkeypatch.setattr(disk_mod, "SYS_ROOT", disk_mod.SYS_ROOT)
    return h


@pytest.fixture
def writes(host):
    return Writes(host)


class Clock:
    """A fake ``time.monotonic``/``time.sleep`` for the state: sleeping only moves the clock."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(leg_state, "_sleep", c.sleep)
    monkeypatch.setattr(leg_state, "_monotonic", c.monotonic)
    return c


@pytest.fixture
def calls():
    """Every __salt__ call the state makes, by name, in order."""
    return []


@pytest.fixture
def configure_loader_modules(run_all, host, writes, calls, pillar, opts, grains, context):
    real = {
        "xencluster_model.validate": model_mod.validate,
        "xencluster_model.node_view": model_mod.node_view,
        "xencluster_model.redact": model_mod.redact,
        "xencluster_lvm.report": lvm_mod.report,
        "xencluster_lvm.lv_args": lvm_mod.lv_args,
        "xencluster_lio.exports": lio_mod.exports,
        "xencluster_lio.export_args": lio_mod.export_args,
        "xencluster_iscsi.sessions": iscsi_mod.sessions,
        "xencluster_iscsi.valid_iqn": iscsi_mod.valid_iqn,
        "xencluster_iscsi.replacement_timeout_arg": iscsi_mod.replacement_timeout_arg,
        "xencluster_disk.links": disk_mod.links,
    }
    fakes = {
        "xencluster_lvm.lv_create": writes.lv_create, "xencluster_lvm.lv_extend": writes.lv_extend,
        "xencluster_lio.export": writes.export, "xencluster_lio.save": writes.save,
        "xencluster_iscsi.login": writes.login, "xencluster_iscsi.logout": writes.logout,
        "xencluster_iscsi.set_replacement_timeout": writes.set_replacement_timeout,
        "xencluster_iscsi.set_chap": writes.set_chap, "xencluster_iscsi.rescan": writes.rescan,
        "xencluster_disk.wait_for": writes.wait_for,
    }  # fmt: skip

    def counted(name, fn):
        def call(*args, **kwargs):
            calls.append(name)
            if name in READS:
                host.sync()
            return fn(*args, **kwargs)

        return call

    salt_funcs = {name: counted(name, fn) for name, fn in {**real, **fakes}.items()}
    return {
        model_mod: {"__pillar__": pillar},
        lvm_mod: {"__salt__": {"cmd.run_all": run_all}},
        iscsi_mod: {"__salt__": {"cmd.run_all": run_all}},
        disk_mod: {"__salt__": {"cmd.run_all": run_all}},
        lio_mod: {"__salt__": {}},
        leg_state: {
            "__salt__": salt_funcs, "__opts__": opts, "__grains__": grains, "__pillar__": pillar,
            "__context__": context,
        },  # fmt: skip
    }


def tools(host):
    """The external tool calls so far: commands run plus rtslib dumps."""
    return [c[0] for c in host.run_all.calls] + ["rtslib.dump"] * host.dumps


def reset(host, writes, calls, context):
    host.run_all.calls.clear()
    host.dumps = 0
    writes.calls.clear()
    calls.clear()
    context.clear()


def ops(ret):
    return [a["op"] for a in ret["changes"].get("actions", [])]


def converge(grains, opts, node="node1"):
    """Run node_legs for real as minion ``node`` (the fakes change the Host); returns the ret."""
    grains["id"] = node
    opts["test"] = False
    ret = leg_state.node_legs("xencluster-legs")
    assert ret["result"] is True, ret["comment"]
    return ret


def many_guests(n, size="64M"):
    """SYNTHETIC model: the lab's nodes with ``n`` guests of one disk each on node1+node2."""
    model = copy.deepcopy(LAB)
    model["guests"] = {
        f"g{i}": {"memory": "128M", "kernel": "/vmlinuz",
                  "disks": [{"name": "root", "size": size, "nodes": ["node1", "node2"], "vg": "xcvg"}]}
        for i in range(n)
    }  # fmt: skip
    return model


# --- module loading ----------------------------------------------------------------------


def test_virtual_needs_the_execution_modules(monkeypatch):
    assert leg_state.__virtual__() == "xencluster_leg"
    monkeypatch.delitem(leg_state.__salt__, "xencluster_iscsi.login")
    monkeypatch.delitem(leg_state.__salt__, "xencluster_lio.exports")
    ok, reason = leg_state.__virtual__()
    assert ok is False
    assert "xencluster_iscsi, xencluster_lio" in reason


# --- a fresh owner: create + export; a fresh partner: login --------------------------------


def test_fresh_owner_test_mode_plans_everything_and_changes_nothing(host, writes, calls, opts):
    opts["test"] = True
    ret = leg_state.node_legs("node1")
    assert ret["result"] is None, ret
    assert ops(ret) == ["lv_create"] * 3 + ["export"] * 3 + ["lio_save"] + ["login"] * 3 + ["wait_for"] * 6
    actions = ret["changes"]["actions"]
    creates = {a["leg"]: a for a in actions if a["op"] == "lv_create"}
    assert sorted(creates) == OWNED1
    assert creates["web1.data.node1"] == {
        "op": "lv_create", "leg": "web1.data.node1", "vg": "xcvg", "lv": "web1.data.node1", "size": 512 * MiB,
        "stripes": 2, "stripe_size": 65536, "pvs": [], "new_size": 512 * MiB,
    }  # fmt: skip
    export = next(a for a in actions if a["op"] == "export" and a["leg"] == "web1.root.node1")
    assert export == {
        "op": "export", "leg": "web1.root.node1", "backstore": "web1.root.node1",
        "device": "/dev/xcvg/web1.root.node1", "target": f"{BASE}:web1.root.node1",
        "initiators": [f"{BASE}:node2"], "portals": [P1], "lun": 0, "serial": "web1.root.node1", "chap": False,
        "steps": ["create_backstore", "create_target", "create_tpg", "create_lun", f"create_acl {BASE}:node2",
                  f"map_lun {BASE}:node2", "set_auth 0", f"create_portal {P1}", "enable_tpg"],
    }  # fmt: skip
    logins = [(a["leg"], a["target"], a["portal"]) for a in actions if a["op"] == "login"]
    assert logins == [(leg, f"{BASE}:{leg}", P2) for leg in IMPORTED1]
    waits = [(a["leg"], a["kind"]) for a in actions if a["op"] == "wait_for"]
    assert waits == [(leg, "lv") for leg in OWNED1] + [(leg, "iscsi") for leg in IMPORTED1]
    assert writes.calls == []
    assert tools(host) == ["pvs", "vgs", "lvs", "iscsiadm", "rtslib.dump"]
    assert "would create LV xcvg/web1.root.node1 of 268435456 bytes" in ret["comment"]


def test_fresh_owner_real_run_does_what_test_mode_predicted_then_converges(host, writes, calls, opts, context):
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    opts["test"] = False
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    results = ret["changes"]["results"]
    assert len(results) == len(ret["changes"]["actions"]) and all(r["result"] for r in results)
    assert writes.names() == ["lv_create"] * 3 + ["export"] * 3 + ["save"] + ["login"] * 3 + ["wait_for"] * 6
    assert writes.calls[1] == ("lv_create", ("xcvg", "web1.data.node1", 512 * MiB),
                               {"stripes": 2, "stripe_size": 65536, "pvs": None})  # fmt: skip
    assert writes.calls[3] == (
        "export", ("db1.root.node1", "/dev/xcvg/db1.root.node1", f"{BASE}:db1.root.node1", [f"{BASE}:node2"], [P1]),
        {"lun": 0, "chap": None, "serial": "db1.root.node1"},
    )  # fmt: skip
    # the plan's steps are exactly what the real xencluster_lio planner did
    exports = [a for a in ret["changes"]["actions"] if a["op"] == "export"]
    assert [[s.split()[0] for s in a["steps"]] for a in exports] == host.lio_ops
    assert [r["detail"]["changes"] for r in results if r["op"] == "export"][0][0].startswith(
        "backstore block/db1.root.node1 created on /dev/xcvg/db1.root.node1 with unit serial db1.root.node1"
    )
    assert leg_state.CONTEXT_KEY not in context  # changed: forgotten

    reset(host, writes, calls, context)
    again = leg_state.node_legs("node1")
    assert again["result"] is True and again["changes"] == {}, again
    assert "converged" in again["comment"]
    assert writes.calls == []


def test_fresh_partner_logs_in_to_the_owners_legs(host, writes, pillar, grains, opts):
    grains["id"] = "node2"
    opts["test"] = True
    predicted = leg_state.node_legs("node2")
    logins = [a for a in predicted["changes"]["actions"] if a["op"] == "login"]
    assert [(a["leg"], a["target"], a["portal"], a["startup"]) for a in logins] == [
        (leg, f"{BASE}:{leg}", P1, "automatic") for leg in OWNED1
    ]
    opts["test"] = False
    ret = leg_state.node_legs("node2")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    assert [c[1] for c in writes.calls if c[0] == "login"] == [(f"{BASE}:{leg}", P1) for leg in OWNED1]
    waits = [c[1] for c in writes.calls if c[0] == "wait_for"]
    assert ("web1", "root", "node1") in waits and ("web1", "root", "node2") in waits
    assert ("log in to iqn.2025-01.lab.xen:web1.root.node1 on 192.168.100.1:3260 (node.startup automatic, "
            "replacement_timeout 20 s)") in ret[
        "comment"
    ]


# --- converged: the same reads for 1 leg as for 40 ------------------------------------------


@pytest.mark.parametrize("test_mode", [False, True])
def test_converged_run_costs_the_same_for_1_and_40_legs(host, writes, calls, pillar, grains, opts, context,
                                                        test_mode):  # fmt: skip
    cost = {}
    for n in (1, 40):
        host.__init__(host.root, host.run_all)  # an empty host again, in a new state run
        context.clear()
        pillar["xencluster"] = many_guests(n)
        first = converge(grains, opts)
        assert first["result"] is True, first["comment"]
        assert len([a for a in first["changes"]["actions"] if a["op"] == "lv_create"]) == n, first["comment"]

        reset(host, writes, calls, context)
        opts["test"] = test_mode
        ret = leg_state.node_legs("node1")
        assert ret["result"] is True and ret["changes"] == {}, ret
        assert writes.calls == []
        cost[n] = (list(calls), tools(host))
    assert cost[1] == cost[40]
    assert cost[1] == (
        ["xencluster_model.validate", "xencluster_model.node_view", *READS],
        ["pvs", "vgs", "lvs", "iscsiadm", "rtslib.dump"],
    )


def test_the_snapshot_is_read_once_per_state_run_and_dropped_after_a_change(grains, host, writes, calls, context, opts):
    converge(grains, opts)
    reset(host, writes, calls, context)
    leg_state.node_legs("node1")
    leg_state.node_legs("node1")  # a second state of the same run: no new read
    leg_state.present("web1.root.node1", from_pillar=True)
    assert [c for c in calls if c in READS] == READS
    assert tools(host) == ["pvs", "vgs", "lvs", "iscsiadm", "rtslib.dump"]
    assert leg_state.CONTEXT_KEY in context

    host.lvs.pop("web1.root.node1")
    host.links.pop("web1.root.node1")
    context.clear()
    ret = leg_state.node_legs("node1")
    assert ops(ret) == ["lv_create", "wait_for"]
    assert leg_state.CONTEXT_KEY not in context  # changed: the next state reads again
    calls.clear()
    assert leg_state.node_legs("node1")["changes"] == {}
    assert [c for c in calls if c in READS] == READS


# --- grow, never shrink --------------------------------------------------------------------


def test_grow(grains, host, writes, calls, pillar, opts, context):
    converge(grains, opts)
    reset(host, writes, calls, context)
    pillar["xencluster"]["guests"]["web1"]["disks"][0]["size"] = "301M"
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    assert predicted["result"] is None
    assert predicted["changes"]["actions"] == [{
        "op": "lv_extend", "leg": "web1.root.node1", "vg": "xcvg", "lv": "web1.root.node1", "size": 301 * MiB,
        "pvs": [], "old_size": 256 * MiB, "new_size": 304 * MiB,
    }]  # fmt: skip
    opts["test"] = False
    context.clear()
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    assert ret["changes"]["results"] == [{
        "op": "lv_extend", "leg": "web1.root.node1", "result": True,
        "detail": {"old_size": 256 * MiB, "new_size": 304 * MiB},
    }]  # fmt: skip
    assert writes.calls == [("lv_extend", ("xcvg", "web1.root.node1", 301 * MiB), {"pvs": None})]
    assert "grow LV xcvg/web1.root.node1 from 268435456 to 318767104 bytes" in ret["comment"]


@pytest.mark.parametrize("test_mode", [False, True])
def test_shrink_is_refused_and_nothing_changes(grains, host, writes, calls, pillar, opts, context, test_mode):
    converge(grains, opts)
    reset(host, writes, calls, context)
    pillar["xencluster"]["guests"]["web1"]["disks"][0]["size"] = "128M"
    opts["test"] = test_mode
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert (
        "error: web1.root.node1: refusing to shrink xcvg/web1.root.node1 from 268435456 to 134217728 bytes: "
        "legs only grow" in ret["comment"]
    )
    assert writes.calls == []


def test_lvm_rounding_is_not_a_shrink(grains, host, writes, calls, pillar, opts, context):
    """An LV LVM rounded up (whole extents, whole stripes) is converged, not 'bigger than asked'."""
    converge(grains, opts)
    reset(host, writes, calls, context)
    host.lvs["web1.root.node1"]["size"] = 256 * MiB
    pillar["xencluster"]["guests"]["web1"]["disks"][0]["size"] = 256 * MiB - 4096
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True and ret["changes"] == {}, ret


def test_free_space_counts_every_leg_of_the_plan(host, opts):
    host.vg_free = 700 * MiB  # not enough for 256M + 512M + 256M
    opts["test"] = True
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    creates = [a["leg"] for a in ret["changes"]["actions"] if a["op"] == "lv_create"]
    assert creates == ["db1.root.node1", "web1.root.node1"]  # 256M fits, 512M no longer does, 256M still does
    assert "error: web1.data.node1: xcvg has 465567744 bytes free, a new LV web1.data.node1 needs 536870912" in ret[
        "comment"
    ]


def test_test_mode_on_a_bare_node_plans_the_legs_in_the_vg_the_highstate_creates_first(host, writes, opts):
    host.bare = True
    opts["test"] = True
    ret = leg_state.node_legs("node1")
    assert ret["result"] is None, ret["comment"]
    creates = {a["leg"]: a["new_size"] for a in ret["changes"]["actions"] if a["op"] == "lv_create"}
    assert creates == {"db1.root.node1": 256 * MiB, "web1.data.node1": 512 * MiB, "web1.root.node1": 256 * MiB}
    assert "warning: web1.root.node1: volume group xcvg does not exist yet; planned as the model's VG, " \
           "created earlier in this run with 4 MiB extents" in ret["comment"]  # fmt: skip
    assert writes.calls == []


def test_a_real_run_without_the_vg_creates_nothing(host, writes, opts):
    host.bare = True
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert "error: web1.root.node1: volume group xcvg not found on this node" in ret["comment"]
    assert [name for name in writes.names() if name in ("lv_create", "export")] == []


# --- test=True == real run -----------------------------------------------------------------


def test_test_mode_and_real_run_return_the_same_actions_on_a_half_converged_host(grains, host, writes, calls,
                                                                                   opts, context):  # fmt: skip
    converge(grains, opts)
    # drift: one LV too small, one export lost its LUN mapping and portal, one session gone
    host.lvs["web1.root.node1"]["size"] = 200 * MiB
    target = next(t for t in host.dump["targets"] if t["wwn"] == f"{BASE}:db1.root.node1")
    target["tpgs"][0]["node_acls"][0]["mapped_luns"] = []
    target["tpgs"][0]["portals"].append(dict(target["tpgs"][0]["portals"][0], ip_address="0.0.0.0"))
    host.sessions = [s for s in host.sessions if s["target"] != f"{BASE}:web1.data.node2"]
    host.links.pop("web1.data.node2")
    host.lio_ops.clear()
    reset(host, writes, calls, context)
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    assert ops(predicted) == ["lv_extend", "export", "lio_save", "login", "wait_for"]
    assert predicted["changes"]["actions"][1]["steps"] == [f"map_lun {BASE}:node2", "delete_portal 0.0.0.0:3260"]
    opts["test"] = False
    context.clear()
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    assert host.lio_ops == [["map_lun", "delete_portal"]]
    assert "(the plan predicted" not in ret["comment"] and "(LIO made" not in ret["comment"]


# --- replacement_timeout: how long a lost leg's I/O waits ---------------------------------


def test_a_new_login_carries_the_clusters_replacement_timeout(host, writes, grains, opts, pillar):
    pillar["xencluster"]["cluster"]["replacement_timeout"] = 15
    converge(grains, opts)
    logins = [c for c in writes.calls if c[0] == "login"]
    assert [c[2] for c in logins] == [{"replacement_timeout": 15}] * len(IMPORTED1)
    assert all(s["recovery_tmo"] == 15 for s in host.sessions)


def test_sessions_with_another_timeout_get_the_models_in_a_test_run_and_a_real_one(host, writes, calls, grains,
                                                                                   opts, context):  # fmt: skip
    converge(grains, opts)
    for s in host.sessions:  # logged in before the model had it: open-iscsi's default
        s["recovery_tmo"] = 120
    host.sessions[0]["recovery_tmo"] = 20  # already right: left alone
    reset(host, writes, calls, context)
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    assert predicted["result"] is None, predicted["comment"]
    actions = predicted["changes"]["actions"]
    assert [a["op"] for a in actions] == ["session_timeout"] * (len(host.sessions) - 1)
    first = host.sessions[1]
    assert actions[0] == {"op": "session_timeout", "leg": first["target"].split(":", 1)[1], "target": first["target"],
                          "portal": first["portal"], "sid": first["sid"], "old": 120, "new": 20}  # fmt: skip
    assert (f"would set replacement_timeout of the session to {first['target']} on {first['portal']} from 120 to "
            "20 s (node record and live session)") in predicted["comment"]
    assert writes.calls == []
    opts["test"] = False
    context.clear()
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == actions
    assert [c[1] for c in writes.calls] == [(s["target"], s["portal"], 20) for s in host.sessions[1:]]
    assert all(s["recovery_tmo"] == 20 for s in host.sessions)
    reset(host, writes, calls, context)
    again = leg_state.node_legs("node1")
    assert again["result"] is True and again["changes"] == {} and writes.calls == []


def test_a_recovering_session_gets_no_timeout_change_only_its_error(host, writes, grains, opts, context, calls):
    converge(grains, opts)
    host.sessions[0].update(state="FAILED", recovery_tmo=120)  # the kernel refuses the write then
    reset(host, writes, calls, context)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert "session_timeout" not in ops(ret) and writes.calls == []
    assert "is FAILED (left to the kernel's recovery" in ret["comment"]


@pytest.mark.parametrize("bad", [0, 4, 601, "20", True, 2.5])
def test_a_bad_replacement_timeout_fails_with_its_key_path_before_any_read(host, writes, calls, pillar, bad):
    pillar["xencluster"]["cluster"]["replacement_timeout"] = bad
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False and ret["changes"] == {}
    assert "xencluster.cluster.replacement_timeout: must be an integer from 5 to 600" in ret["comment"]
    assert calls == ["xencluster_model.validate"] and writes.calls == []


@pytest.mark.parametrize("bad", [0, 3601, "20", True])
def test_present_refuses_a_bad_replacement_timeout(host, writes, grains, calls, bad):
    grains["id"] = "node2"
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2",
                            replacement_timeout=bad)  # fmt: skip
    assert ret["result"] is False and f"replacement_timeout must be 1 to 3600 seconds: {bad!r}" == ret["comment"]
    assert calls == ["xencluster_iscsi.replacement_timeout_arg"] and writes.calls == []  # the check only


def test_present_without_a_replacement_timeout_leaves_the_sessions_alone(host, writes, grains):
    grains["id"] = "node2"
    host.add_session(f"{BASE}:web9.root.node1", P1, recovery_tmo=120)
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2")
    assert ret["result"] is True and ret["changes"] == {}, ret["comment"]
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2",
                            replacement_timeout=30)  # fmt: skip
    assert ret["result"] is True and ops(ret) == ["session_timeout"]
    assert host.sessions[0]["recovery_tmo"] == 30


# --- bad pillar: nothing read, nothing changed ------------------------------------------------


@pytest.mark.parametrize("test_mode", [False, True])
def test_bad_pillar_fails_with_key_paths_before_any_read(host, writes, calls, pillar, opts, test_mode):
    pillar["xencluster"]["guests"]["web1"]["disks"][0]["nodes"] = ["node1", "node1"]
    pillar["xencluster"]["guests"]["db1"]["disks"][0]["size"] = "1.5G"
    opts["test"] = test_mode
    with pytest.raises(SaltInvocationError) as exc:
        model_mod.validate()
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == str(exc.value)
    assert "xencluster.guests.web1.disks.root.nodes: both legs on node1" in ret["comment"]
    assert "xencluster.guests.db1.disks.root.size: invalid size '1.5G'" in ret["comment"]
    assert calls == ["xencluster_model.validate"]
    assert tools(host) == [] and writes.calls == []


def test_missing_pillar_and_unknown_node(host, writes, calls, pillar, grains):
    pillar.clear()
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False and ret["comment"].startswith("xencluster: missing from the pillar")
    pillar["xencluster"] = copy.deepcopy(LAB)
    grains["id"] = "node9"
    ret = leg_state.node_legs("xencluster-legs")
    assert ret["result"] is False
    assert ret["comment"] == "xencluster.nodes: no node or minion id 'xencluster-legs' or 'node9' in the model"
    assert tools(host) == [] and writes.calls == []


def test_a_node_is_converged_only_on_itself(host, writes, calls, grains):
    grains["id"] = "node2"
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert "node1 is minion 'node1', not this minion 'node2'" in ret["comment"]
    assert tools(host) == []
    ret = leg_state.node_legs("xencluster-legs", node="nodeX")
    assert ret["result"] is False and "no node or minion id 'nodeX'" in ret["comment"]


def test_name_that_is_not_a_node_means_this_minion(host, opts, grains):
    grains["id"] = "node2"
    opts["test"] = True
    ret = leg_state.node_legs("legs of this dom0")
    assert ret["result"] is None
    assert ret["comment"].startswith("node2: 3 owned and 3 imported leg(s)")


# --- what the state reports but never undoes -------------------------------------------------


def test_foreign_session_is_a_warning_not_a_logout(host, writes, calls, pillar, grains, opts, context, run_all):
    """node2 is logged in (recorded, verbatim) to a target under the cluster's IQN base that the model does not name."""
    converge(grains, opts, node="node2")
    reset(host, writes, calls, context)
    host.sessions.append({"sid": 90, "portal": P1, "target": f"{BASE}:xcl-node1", "state": "LOGGED_IN", "lun0": True})
    host.sessions.append({"sid": 91, "portal": P1, "target": "iqn.2003-01.org.other:disk", "state": "LOGGED_IN",
                          "lun0": True})  # fmt: skip
    ret = leg_state.node_legs("node2")
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert (
        "warning: session to iqn.2025-01.lab.xen:xcl-node1 on 192.168.100.1:3260 is not in the model: left logged in"
        in ret["comment"]
    )
    assert "org.other" not in ret["comment"]  # not a xencluster target: none of our business
    assert writes.calls == []

    context.clear()
    opts["test"] = True
    ret = leg_state.node_legs("node2", prune=True)
    assert ret["changes"]["actions"] == [
        {"op": "logout", "target": f"{BASE}:xcl-node1", "portal": P1, "delete": True}
    ]
    opts["test"] = False
    ret = leg_state.node_legs("node2", prune=True)
    assert ret["result"] is True
    assert writes.calls == [("logout", (f"{BASE}:xcl-node1", P1), {"delete": True})]


def test_recorded_session_and_export_parse_into_foreign_warnings(host, run_all, grains, opts, context):
    """The lab recordings verbatim: node2's session and node1's export of the xcl-node1 test target."""
    grains["id"] = "node2"
    opts["test"] = True
    run_all.outputs[tuple(iscsi_mod.SESSION_ARGV)] = _answer(ONE_SESSION, "session")
    host.sync = lambda: None  # keep the verbatim answers
    host.dump = json.loads((REC / "lio" / "lab-node1-xcl-export" / "dump.json").read_text())
    run_all.outputs.update({c: (LVM_REC / f"{c}.out").read_text() for c in ("pvs", "vgs", "lvs")})
    sysfs = host.root / "sys-iscsi"
    for session, entry in json.loads((ONE_SESSION / "sysfs.json").read_text()).items():
        (sysfs / session).mkdir(parents=True)
        for key in ("targetname", "state"):
            (sysfs / session / key).write_text(entry[key] + "\n")
        for block in entry["block"]:
            (sysfs / session / block).mkdir(parents=True)
    iscsi_mod.SYSFS_SESSIONS = str(sysfs)
    Host.sync_links(host)
    ret = leg_state.node_legs("node2")
    assert "warning: session to iqn.2025-01.lab.xen:xcl-node1 on 192.168.100.1:3260 is not in the model" in ret[
        "comment"
    ]
    assert "warning: target iqn.2025-01.lab.xen:xcl-node1 is exported but not in the model: left as is" in ret[
        "comment"
    ]


def test_export_to_an_initiator_outside_the_pair_is_reported_not_removed(grains, host, writes, calls, pillar, opts,
                                                                         context):  # fmt: skip
    converge(grains, opts)
    host.add_export("web1.root.node1", [f"{BASE}:node2", f"{BASE}:node3"], [P1])
    reset(host, writes, calls, context)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert (
        "error: web1.root.node1: iqn.2025-01.lab.xen:web1.root.node1 is exported to iqn.2025-01.lab.xen:node3, "
        "outside the leg's pair: not changed (xencluster_lio.export never removes access" in ret["comment"]
    )
    assert writes.calls == []


def test_failed_session_is_an_error_left_to_the_kernel(grains, host, writes, calls, pillar, opts, context):
    converge(grains, opts)
    session = next(s for s in host.sessions if s["target"] == f"{BASE}:db1.root.node2")
    session["state"] = "FAILED"
    reset(host, writes, calls, context)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False and ret["changes"] == {}
    assert "error: db1.root.node2: the session to iqn.2025-01.lab.xen:db1.root.node2 on 192.168.100.2:3260 " \
           "is FAILED" in ret["comment"]  # fmt: skip


def test_lun_mapped_after_the_login_is_rescanned(grains, host, writes, calls, pillar, opts, context):
    converge(grains, opts)
    session = next(s for s in host.sessions if s["target"] == f"{BASE}:db1.root.node2")
    session["lun0"] = False
    host.links.pop("db1.root.node2")
    reset(host, writes, calls, context)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ops(ret) == ["rescan", "wait_for"]
    assert writes.names() == ["rescan", "wait_for"]


def test_stable_path_pointing_elsewhere_is_an_error(grains, host, writes, calls, pillar, opts, context):
    converge(grains, opts)
    host.links["web1.root.node2"] = "unknown"
    reset(host, writes, calls, context)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert "error: web1.root.node2: its stable path points to" in ret["comment"]


def test_a_failed_step_skips_the_rest_of_its_leg_only(host, writes, calls, opts, monkeypatch):
    def broken(vg, name, size, **kwargs):
        if name == "web1.root.node1":
            raise lvm_mod.CommandExecutionError("lvcreate failed (rc 5): Insufficient suitable allocatable extents")
        return Writes.lv_create(writes, vg, name, size, **kwargs)

    monkeypatch.setitem(leg_state.__salt__, "xencluster_lvm.lv_create", broken)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    results = {(r["op"], r.get("leg")): r for r in ret["changes"]["results"]}
    assert results[("lv_create", "web1.root.node1")]["result"] is False
    assert "Insufficient suitable allocatable extents" in results[("lv_create", "web1.root.node1")]["comment"]
    assert results[("export", "web1.root.node1")]["comment"] == "skipped: an earlier step of this leg failed"
    assert results[("export", "db1.root.node1")]["result"] is True
    assert "error: create LV xcvg/web1.root.node1 of 268435456 bytes: lvcreate failed" in ret["comment"]


# --- waiting for the partner's exports (both dom0s converge at the same time) ----------------

REFUSALS = {
    8: "connection timed out",  # no portal listening on the partner yet
    19: "encountered non-retryable iSCSI login failure",  # LIO: target not found, or no ACL for us
    24: "iSCSI login failed due to authorization failure",  # no ACL yet (open-iscsi that tells it apart)
    20: "could not connect to iscsid",  # local: never retried
}


class Partner:
    """The partner dom0 behind the login: refuses ``refusals(target)`` times, then lets us in.

    A refused attempt goes through the REAL ``xencluster_iscsi.login`` with
    ``iscsiadm --login`` failing as open-iscsi does (exit code ``retcode``),
    so the state sees exactly what the module raises. Each attempt takes
    ``duration`` seconds on the fake clock.
    """

    def __init__(self, run_all, writes, clock, refusals, retcode=19, duration=0):
        self.run_all, self.writes, self.clock = run_all, writes, clock
        self.refusals, self.retcode, self.duration = refusals, retcode, duration
        self.attempts = {}  # target -> attempts
        self.times = []  # (clock time, target) of each attempt

    def login(self, target, portal, wait=15, replacement_timeout=None):
        n = self.attempts[target] = self.attempts.get(target, 0) + 1
        self.times.append((self.clock.now, target))
        self.clock.now += self.duration
        if n > self.refusals(target):
            return self.writes.login(target, portal, wait, replacement_timeout)
        node = ["iscsiadm", "-m", "node", "-T", target, "-p", portal]
        self.run_all.outputs[tuple(node)] = "node.name = x\n"
        self.run_all.outputs[(*node, "-o", "show")] = "node.startup = automatic\n"
        self.run_all.outputs[(*node, "--login")] = {"retcode": self.retcode, "stderr": (
            f"iscsiadm: Could not login to [iface: default, target: {target}, portal: {portal.replace(':', ',')}].\n"
            f"iscsiadm: initiator reported error ({self.retcode} - {REFUSALS[self.retcode]})\n"
            "iscsiadm: Could not log into all portals\n"
        )}  # fmt: skip
        return iscsi_mod.login(target, portal, wait)  # its record: set_replacement_timeout tests


@pytest.fixture
def partner(run_all, writes, clock, monkeypatch):
    """partner(refusals, retcode=19, duration=0): install a Partner as xencluster_iscsi.login."""

    def make(refusals, retcode=19, duration=0):
        p = Partner(run_all, writes, clock, refusals, retcode, duration)
        monkeypatch.setitem(leg_state.__salt__, "xencluster_iscsi.login", p.login)
        return p

    return make


def waiting_lines(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == leg_state.__name__ and r.levelname == "INFO" and "waiting for" in r.getMessage()]  # fmt: skip


def login_results(ret):
    return {r["leg"]: r for r in ret["changes"]["results"] if r["op"] == "login"}


def test_a_login_the_partner_refuses_twice_is_retried_and_logged(host, writes, opts, partner, clock, caplog):
    caplog.set_level("INFO", logger=leg_state.__name__)
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    opts["test"] = False
    p = partner(lambda target: 2 if target == f"{BASE}:web1.root.node2" else 0)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]  # waiting is not in the plan
    logins = login_results(ret)
    assert {leg: r["detail"]["attempts"] for leg, r in logins.items()} == {
        "db1.root.node2": 1, "web1.data.node2": 1, "web1.root.node2": 3,
    }  # fmt: skip
    assert all(r["result"] for r in ret["changes"]["results"])
    assert p.attempts[f"{BASE}:web1.root.node2"] == 3
    assert clock.sleeps == [leg_state.LOGIN_RETRY_INTERVAL] * 2
    target = f"{BASE}:web1.root.node2"
    assert waiting_lines(caplog) == [
        f"xencluster_leg: waiting for node2 to export {target} on {P2} (attempt 1, 600 s left): "
        f"iscsiadm -m node -T {target} -p {P2} --login failed (rc 19): iscsiadm: Could not login to "
        f"[iface: default, target: {target}, portal: 192.168.100.2,3260].\n"
        "iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\n"
        "iscsiadm: Could not log into all portals",
        f"xencluster_leg: waiting for node2 to export {target} on {P2} (attempt 2, 590 s left): "
        f"iscsiadm -m node -T {target} -p {P2} --login failed (rc 19): iscsiadm: Could not login to "
        f"[iface: default, target: {target}, portal: 192.168.100.2,3260].\n"
        "iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\n"
        "iscsiadm: Could not log into all portals",
    ]
    assert "error" not in ret["comment"]
    assert writes.names().count("wait_for") == 6


def test_a_partner_that_never_exports_fails_every_login_after_one_shared_deadline(host, writes, opts, partner, clock,
                                                                                 caplog):  # fmt: skip
    caplog.set_level("INFO", logger=leg_state.__name__)
    p = partner(lambda target: float("inf"), retcode=24, duration=1)
    start = clock.now
    ret = leg_state.node_legs("node1", import_wait=25)
    assert ret["result"] is False
    # the first login waits out the deadline (attempts at 0, 11, 22, 25 s), each later one tries once
    assert p.attempts == {f"{BASE}:db1.root.node2": 4, f"{BASE}:web1.data.node2": 1, f"{BASE}:web1.root.node2": 1}
    assert [t - start for t, _ in p.times] == [0, 11, 22, 25, 26, 27]
    assert clock.sleeps == [10, 10, 2] and clock.now - start == 28  # 25 s and one last try per leg, not 3 x 25 s
    assert len(waiting_lines(caplog)) == 3
    assert waiting_lines(caplog)[-1].startswith(
        f"xencluster_leg: waiting for node2 to export {BASE}:db1.root.node2 on {P2} (attempt 3, 2 s left)"
    )
    logins = login_results(ret)
    for leg, attempts in (("db1.root.node2", 4), ("web1.data.node2", 1), ("web1.root.node2", 1)):
        comment = logins[leg]["comment"]
        assert logins[leg]["result"] is False
        assert comment.startswith(f"log in to {BASE}:{leg} on {P2} (node.startup automatic, replacement_timeout 20 s): "
                                  f"node2 did not let this "
                                  f"node log in to {BASE}:{leg} on {P2} within import_wait=25 s (one deadline for "
                                  f"every login of this run; {attempts} attempt(s) for this one); last error: ")
        assert "initiator reported error (24 - iSCSI login failed due to authorization failure)" in comment
        assert comment in ret["comment"]
    # the rest of those legs is skipped; the owned legs were applied before any login
    waits = {r["leg"]: r for r in ret["changes"]["results"] if r["op"] == "wait_for"}
    assert all(waits[leg]["comment"] == "skipped: an earlier step of this leg failed" for leg in IMPORTED1)
    assert all(waits[leg]["result"] for leg in OWNED1)
    assert writes.names() == ["lv_create"] * 3 + ["export"] * 3 + ["save"] + ["wait_for"] * 3


def test_import_wait_0_makes_one_attempt(host, writes, opts, partner, clock, caplog):
    caplog.set_level("INFO", logger=leg_state.__name__)
    p = partner(lambda target: 1, retcode=8)
    ret = leg_state.node_legs("node1", import_wait=0)
    assert ret["result"] is False
    assert p.attempts == {f"{BASE}:{leg}": 1 for leg in IMPORTED1}
    assert clock.sleeps == [] and waiting_lines(caplog) == []
    comment = login_results(ret)["web1.root.node2"]["comment"]
    assert comment.startswith(f"log in to {BASE}:web1.root.node2 on {P2} (node.startup automatic, replacement_timeout "
                              f"20 s): iscsiadm -m node "
                              f"-T {BASE}:web1.root.node2 -p {P2} --login failed (rc 8): ")  # the error as it came
    assert "initiator reported error (8 - connection timed out)" in comment


def test_present_on_the_partner_waits_for_the_owner(host, writes, grains, partner, clock):
    grains["id"] = "node2"
    p = partner(lambda target: 1, retcode=8)
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2",
                            import_wait=30)  # fmt: skip
    assert ret["result"] is True, ret["comment"]
    assert login_results(ret)["web9.root.node1"]["detail"]["attempts"] == 2
    assert p.attempts == {f"{BASE}:web9.root.node1": 2} and clock.sleeps == [leg_state.LOGIN_RETRY_INTERVAL]
    p = partner(lambda target: 1, retcode=8)
    host.sessions.clear()
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2",
                            import_wait=0)  # fmt: skip
    assert ret["result"] is False and "rc 8" in ret["comment"]
    assert p.attempts == {f"{BASE}:web9.root.node1": 1}


@pytest.mark.parametrize(
    "error",
    [
        SaltInvocationError("invalid target IQN: 'iqn.2025-01.lab.xen:x;reboot'"),
        "iscsid",  # a real CommandExecutionError of xencluster_iscsi.login (rc 20: iscsid down), not marked retryable
        RuntimeError("a bug"),
    ],
)
def test_a_login_error_that_is_not_the_partner_is_not_retried(host, writes, opts, partner, clock, caplog, error,
                                                             monkeypatch):  # fmt: skip
    caplog.set_level("INFO", logger=leg_state.__name__)
    p = partner(lambda target: 1, retcode=20)
    if error != "iscsid":
        def broken(target, portal, wait=15, replacement_timeout=None):
            p.attempts[target] = p.attempts.get(target, 0) + 1
            raise error

        monkeypatch.setitem(leg_state.__salt__, "xencluster_iscsi.login", broken)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert p.attempts == {f"{BASE}:{leg}": 1 for leg in IMPORTED1}
    assert clock.sleeps == [] and waiting_lines(caplog) == []
    comment = login_results(ret)["db1.root.node2"]["comment"]
    assert "import_wait" not in comment
    assert ("rc 20" if error == "iscsid" else str(error)) in comment


@pytest.mark.parametrize("bad", [True, False, "600", "10m", -1, 3601, float("nan"), float("inf"), None, [600]])
@pytest.mark.parametrize("test_mode", [False, True])
def test_bad_import_wait_is_refused_before_any_read(host, writes, calls, opts, grains, bad, test_mode):
    opts["test"] = test_mode
    ret = leg_state.node_legs("node1", import_wait=bad)
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == f"import_wait must be a number of seconds from 0 (one login attempt) to 3600: {bad!r}"
    grains["id"] = "node2"
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2",
                            import_wait=bad)  # fmt: skip
    assert ret["result"] is False and "import_wait must be a number of seconds" in ret["comment"]
    assert calls == [] and tools(host) == [] and writes.calls == []


@pytest.mark.parametrize("import_wait", [0, 0.5, 600, 3600])
def test_import_wait_changes_nothing_in_the_plan_or_test_mode(host, writes, opts, grains, import_wait, context):
    opts["test"] = True
    default = leg_state.node_legs("node1")
    context.clear()
    ret = leg_state.node_legs("node1", import_wait=import_wait)
    assert ret == default
    assert ops(ret) == ["lv_create"] * 3 + ["export"] * 3 + ["lio_save"] + ["login"] * 3 + ["wait_for"] * 6
    assert "import_wait" not in json.dumps(ret) and "attempt" not in json.dumps(ret)
    grains["id"] = "node2"
    context.clear()
    args = {"target": f"{BASE}:web9.root.node1", "portals": [P1], "partner": "node2"}
    assert leg_state.present("web9.root.node1", **args, import_wait=import_wait) == leg_state.present(
        "web9.root.node1", **args
    )
    assert writes.calls == []


# --- secrets -----------------------------------------------------------------------------------


def test_chap_secrets_reach_lio_and_iscsiadm_but_never_a_return(host, writes, pillar, opts, grains, context):
    pillar["xencluster"]["cluster"]["chap"] = {
        "userid": "xc-lab", "password": SECRET, "mutual_userid": "xc-target", "mutual_password": MUTUAL,
    }  # fmt: skip
    opts["test"] = True
    predicted = leg_state.node_legs("node1")
    opts["test"] = False
    ret = leg_state.node_legs("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    for shown in (predicted, ret):
        text = json.dumps(shown)
        assert SECRET not in text and MUTUAL not in text
    export = next(a for a in ret["changes"]["actions"] if a["op"] == "export")
    assert export["chap"] is True and f"set_chap {BASE}:node2" in export["steps"] and "set_auth 1" in export["steps"]
    chap = next(c for c in writes.calls if c[0] == "export")[2]["chap"]
    assert chap == {"userid": "xc-lab", "password": SECRET, "mutual_userid": "xc-target", "mutual_password": MUTUAL}
    set_chap = next(c for c in writes.calls if c[0] == "set_chap")[1]
    assert set_chap[2:] == ("xc-lab", SECRET, "xc-target", MUTUAL)
    login = next(r for r in ret["changes"]["results"] if r["op"] == "login")
    assert login["detail"]["changes"][0] == "CHAP credentials set on the node record"


def test_a_failure_message_never_echoes_a_secret(host, writes, pillar, opts, monkeypatch):
    pillar["xencluster"]["cluster"]["chap"] = {"userid": "xc-lab", "password": SECRET}

    def leaky(*args, **kwargs):
        raise RuntimeError(f"iscsiadm said something about {SECRET}")

    monkeypatch.setitem(leg_state.__salt__, "xencluster_iscsi.set_chap", leaky)
    ret = leg_state.node_legs("node1")
    assert ret["result"] is False
    assert SECRET not in json.dumps(ret)
    assert "iscsiadm said something about ********" in ret["comment"]


# --- one leg by hand ----------------------------------------------------------------------------


def test_present_by_hand_on_the_owner(host, writes, calls, opts):
    args = {"vg": "xcvg", "size": "20M", "target": f"{BASE}:web9.root.node1", "initiators": [f"{BASE}:node2"],
            "portals": ["192.168.100.1"]}  # fmt: skip
    opts["test"] = True
    predicted = leg_state.present("web9.root.node1", **args)
    assert predicted["result"] is None, predicted
    assert ops(predicted) == ["lv_create", "export", "lio_save", "wait_for"]
    assert [c for c in calls if c in READS] == ["xencluster_lvm.report", "xencluster_lio.exports",
                                                "xencluster_disk.links"]  # fmt: skip
    opts["test"] = False
    ret = leg_state.present("web9.root.node1", **args)
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["actions"] == predicted["changes"]["actions"]
    assert ret["changes"]["actions"][1]["portals"] == [P1]
    assert leg_state.present("web9.root.node1", **args)["changes"] == {}


def test_present_by_hand_on_the_partner(host, writes, calls, grains):
    grains["id"] = "node2"
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2")
    assert ret["result"] is True, ret["comment"]
    assert ops(ret) == ["login", "wait_for"]
    assert [c for c in calls if c in READS] == ["xencluster_iscsi.sessions", "xencluster_disk.links"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vg": "xcvg", "size": "1.5G"}, "invalid size"),
        ({"vg": "xcvg", "size": "1G", "portals": ["0.0.0.0"]}, "invalid portal"),
        ({"vg": "xcvg", "size": "1G", "serial": "other"}, "serial must be the leg id"),
        ({"vg": "xcvg", "size": "1G", "initiators": ["iqn.2025-01.lab:x"]}, "invalid initiator IQN"),
        ({"size": "1G"}, "needs vg"),
        ({"vg": "xcvg", "size": "1G", "owner": "node2"}, "is not the node of leg id"),
        ({"vg": "xcvg", "size": "1G", "chap": {"userid": "x"}}, "chap must be a mapping with userid and password"),
        ({"vg": "xcvg", "size": "1G", "timeout": 0}, "timeout must be"),
    ],
)
def test_present_refuses_bad_arguments_before_any_read(host, writes, calls, kwargs, message):
    args = {"target": f"{BASE}:web9.root.node1", "initiators": [f"{BASE}:node2"], "portals": [P1], **kwargs}
    ret = leg_state.present("web9.root.node1", **args)
    assert ret["result"] is False and message in ret["comment"], ret
    assert [c for c in calls if c in READS] == [] and tools(host) == [] and writes.calls == []


def test_present_refuses_a_bad_leg_id_and_a_stranger_node(host, grains):
    assert "invalid leg id" in leg_state.present("web9;reboot", vg="xcvg")["comment"]
    grains["id"] = "node3"
    ret = leg_state.present("web9.root.node1", target=f"{BASE}:web9.root.node1", portals=[P1], partner="node2")
    assert ret["result"] is False and "neither the owner" in ret["comment"]
    assert tools(host) == []


def test_present_from_pillar(host, writes, opts):
    opts["test"] = True
    ret = leg_state.present("web1.data.node2", from_pillar=True)
    assert ret["result"] is None
    assert ops(ret) == ["login", "wait_for"]
    assert "not a leg of node1" in leg_state.present("web9.root.node1", from_pillar=True)["comment"]


# --- the plan is pure -------------------------------------------------------------------------


def test_plan_is_pure_and_never_plans_a_removal(grains, host, writes, calls, pillar, opts, context):
    converge(grains, opts)
    reset(host, writes, calls, context)
    view = model_mod.node_view("node1")
    host.sync()
    snapshot = {"lvm": lvm_mod.report(), "lio": lio_mod.exports(), "sessions": iscsi_mod.sessions(),
                "links": disk_mod.links()}  # fmt: skip
    before = copy.deepcopy(snapshot)
    desired = leg_state.desired_from_view(view)
    desired["owned"][0]["size"] = 1  # a shrink
    desired["imported"] = []  # every session is now foreign
    result = leg_state.plan(snapshot, desired)
    assert snapshot == before
    assert result["actions"] == []
    assert any("refusing to shrink" in e for e in result["errors"])
    assert len([w for w in result["warnings"] if "not in the model" in w]) == 3
    desired["prune"] = True
    assert [a["op"] for a in leg_state.plan(snapshot, desired)["actions"]] == ["logout"] * 3
