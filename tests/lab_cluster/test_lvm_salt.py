"""xencluster_lvm through Salt on a real dom0: striped LV, tags, grow, classic snapshot, removal guards.

On node1 the test makes VG ``xcstripe`` over BOTH data disks (vgcreate over
ssh), then drives everything else through the host master with
``xencluster_lvm``: a striped LV (2 x 64 KiB) with a tag, tag changes, growth
and a refused shrink, a 32M snapshot that keeps the old data while the origin
is overwritten (checked by sha256 with direct I/O over ssh), its usage, and the
refusals of ``lv_remove``/``snapshot_remove`` (origin with snapshots, LV held
open, not a snapshot) before the real removals.

Commands that are not under test (vgcreate, dd, sha256sum, the process that
holds an LV open, cleanup) go over ``python -m lab ssh``, so they never depend
on the module being tested. Everything is removed at the end, whatever
happened: the holder process, the VG with its LVs, the PV labels of both disks
and the temporary files. test_lio_iscsi (data1) and test_stable_paths (data2)
use the same disks with their own VGs; the modules run one after the other,
and vgcreate here fails, saying so, if one of them left its VG behind.

A refusal (CommandExecutionError, SaltInvocationError) comes back from the
minion as a string ``"ERROR: ..."`` / ``"ERROR executing '<fun>': ..."``
instead of the function's dict (salt.minion._thread_return): ``refused()``
asserts exactly that and returns the message.
"""

import json
import re
import shlex
import time

import pytest

from labcli import lab, salt

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NODE = "node1"
DISKS = ["/dev/disk/by-id/virtio-n1data1", "/dev/disk/by-id/virtio-n1data2"]
VG = "xcstripe"
LV, SNAP, HELD = "st1", "st1-snap", "held"
MiB = 1024**2
DATA_MIB = 8
TMP = "/tmp/xcl-lvm"  # prefix of the temporary files on node1
HOLDER_PID = f"{TMP}-held.pid"

# Stops the process hold_open() started (only if that pid still is a `sleep`), waits for it to go.
RELEASE = "; ".join([
    f"[ -f {HOLDER_PID} ] || exit 0",
    f"pid=$(cat {HOLDER_PID})",
    'held() { [ "$(cat /proc/$pid/comm 2>/dev/null)" = sleep ]; }',
    "if held; then kill $pid; fi",
    "i=0",
    "while held && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
    'if held; then echo "pid $pid still holds the LV" >&2; exit 1; fi',
    f"rm -f {HOLDER_PID}",
])  # fmt: skip


def ssh(argv_or_line, ok=(0,), timeout=120):
    """A command on NODE over `python -m lab ssh`: an argv list (quoted) or a shell line."""
    line = argv_or_line if isinstance(argv_or_line, str) else shlex.join(argv_or_line)
    proc = lab("ssh", NODE, line, timeout=timeout, check=False)
    assert proc.returncode in ok, (
        f"{NODE}: `{line}` exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc


def call(fun, *args):
    """A Salt call that must succeed: the function's dict, not an error string."""
    result = salt(NODE, fun, *args)
    assert NODE in result, f"{fun} {args}: no answer from {NODE}: {result}"
    ret = result[NODE]
    assert isinstance(ret, dict), f"{fun} {args}: expected a dict, got {ret!r}"
    return ret


def refused(fun, *args):
    """A Salt call that must be refused: the minion's "ERROR..." string (the exception's message)."""
    result = salt(NODE, fun, *args)
    ret = result.get(NODE, result)
    assert isinstance(ret, str) and ret.startswith("ERROR"), f"{fun} {args}: expected a refusal, got {ret!r}"
    return ret


def lvs():
    """{"vg/lv": lv} of VG from one xencluster_lvm.report."""
    return {k: v for k, v in call("xencluster_lvm.report")["lvs"].items() if k.startswith(f"{VG}/")}


def realpaths(paths):
    out = ssh(["readlink", "-f", "--", *paths]).stdout.split()
    assert len(out) == len(paths), (paths, out)
    return out


def sha256(path):
    return ssh(["sha256sum", path]).stdout.split()[0]


def write_random(device, name):
    """DATA_MIB MiB of fresh random data onto the start of ``device`` (direct I/O); their sha256."""
    src = f"{TMP}-{name}"
    ssh(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={DATA_MIB}", "iflag=fullblock", "status=none"])
    ssh(["dd", f"if={src}", f"of={device}", "bs=1M", "oflag=direct", "conv=fsync,notrunc", "status=none"])
    return sha256(src)


def read_sha256(device):
    """sha256 of the first DATA_MIB MiB of ``device``, read with direct I/O (not the page cache)."""
    dst = f"{TMP}-readback"
    ssh(["dd", f"if={device}", f"of={dst}", "bs=1M", f"count={DATA_MIB}", "iflag=direct", "status=none"])
    return sha256(dst)


def hold_open(device):
    """A `sleep` in its own session holding ``device`` open; its pid in HOLDER_PID (RELEASE stops it)."""
    inner = f"echo $$ >{HOLDER_PID}; exec sleep 600 <{device}"
    ssh(f"setsid -f sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1")


def wait_open(key, want, tries=30):
    """report until LV ``key`` has open == want; its last view."""
    for _ in range(tries):
        lv = lvs().get(key)
        if lv is not None and lv["open"] is want:
            return lv
        time.sleep(1)
    raise AssertionError(f"{key}: open is not {want} after {tries} tries: {lv}")


@pytest.fixture(scope="module")
def synced(lab_cluster):
    return lab_cluster  # the extension is synced and loaded once for the session (conftest.py)


@pytest.fixture
def stripe_vg(synced):
    """VG xcstripe over both data disks of node1; afterwards nothing of it is left, whatever happened."""
    # A run killed half way may have left the holder or the VG: both are ours (never other tests' VGs).
    ssh(RELEASE)
    ssh(["vgremove", "--force", "--yes", VG], ok=(0, 5))
    try:
        ssh(["vgcreate", "--yes", VG, *DISKS])  # makes both disks PVs too
        yield VG
    finally:
        problems = []

        def attempt(what, argv_or_line, ok=(0,)):
            try:
                ssh(argv_or_line, ok)
            except AssertionError as exc:
                problems.append(f"{what}: {exc}")

        attempt("holder process", RELEASE)
        attempt("vgremove", ["vgremove", "--force", "--yes", VG], ok=(0, 5))  # and all its LVs
        for disk in DISKS:
            attempt(f"pvremove {disk}", ["pvremove", "--yes", disk], ok=(0, 5))
        attempt("temporary files", f"rm -f {TMP}-*")
        for disk in DISKS:  # rc 2: blkid found no signature at all
            try:
                label = ssh(["blkid", "-p", "-s", "TYPE", "-o", "value", disk], ok=(0, 2)).stdout.strip()
            except AssertionError as exc:
                problems.append(f"blkid {disk}: {exc}")
            else:
                if label == "LVM2_member":
                    problems.append(f"{disk} still has a PV label")
        assert not problems, "cleanup failed:\n" + "\n".join(problems)


def test_striped_lv_tags_grow_snapshot_and_removal_guards(stripe_vg):
    key, snap_key, held_key = f"{VG}/{LV}", f"{VG}/{SNAP}", f"{VG}/{HELD}"

    # --- a striped LV with a tag: one segment of 2 stripes x 64 KiB, one stripe on each disk -----------
    created = call("xencluster_lvm.lv_create", VG, LV, "64M", "stripes=2", "stripe_size=64k",
                   f"tags={json.dumps(['xc-test'])}")  # fmt: skip
    assert (created["vg"], created["name"], created["size"], created["tags"]) == (
        VG, LV, 64 * MiB, ["xc-test"]
    ), created  # fmt: skip
    rep = call("xencluster_lvm.report")
    lv = rep["lvs"][key]
    assert lv["segments"] == created["segments"] and lv["size"] == 64 * MiB, (created, lv)
    assert lv["seg_count"] == 1 and len(lv["segments"]) == 1, lv
    (seg,) = lv["segments"]
    assert (seg["type"], seg["stripes"], seg["stripe_size"], seg["start"], seg["size"]) == (
        "striped", 2, 65536, 0, 64 * MiB
    ), seg  # fmt: skip
    assert (lv["tags"], lv["origin"], lv["snapshot_usage"], lv["active"], lv["open"]) == (
        ["xc-test"], None, None, True, False
    ), lv  # fmt: skip
    # LVM names the PVs by their kernel name (/dev/vdX): compare real paths with the by-id disks.
    disks = realpaths(DISKS)
    seg_pvs = [re.sub(r"\(\d+\)$", "", d) for d in seg["devices"]]
    assert sorted(realpaths(seg_pvs)) == sorted(disks), (seg["devices"], DISKS, disks)
    vg_pvs = [name for name, pv in rep["pvs"].items() if pv["vg_name"] == VG]
    assert sorted(realpaths(vg_pvs)) == sorted(disks), rep["pvs"]
    assert rep["vgs"][VG]["pv_count"] == 2 and rep["vgs"][VG]["lv_count"] == 1, rep["vgs"][VG]

    # --- tags: add and remove, each twice; the second identical call changes nothing ------------------
    more = f"add={json.dumps(['xc-more'])}"
    added = call("xencluster_lvm.lv_tags", VG, LV, more)
    assert (added["old"], sorted(added["new"])) == (["xc-test"], ["xc-more", "xc-test"]), added
    again = call("xencluster_lvm.lv_tags", VG, LV, more)
    assert again["old"] == again["new"] and sorted(again["new"]) == ["xc-more", "xc-test"], again
    less = f"remove={json.dumps(['xc-more'])}"
    removed = call("xencluster_lvm.lv_tags", VG, LV, less)
    assert (sorted(removed["old"]), removed["new"]) == (["xc-more", "xc-test"], ["xc-test"]), removed
    again = call("xencluster_lvm.lv_tags", VG, LV, less)
    assert again == {"old": ["xc-test"], "new": ["xc-test"]}, again
    assert lvs()[key]["tags"] == ["xc-test"]

    # --- grow to 128M; the same size again is a no-op; a shrink is refused -------------------------------
    # (before the snapshot exists: LVM refuses to resize an active snapshot origin at all)
    grown = call("xencluster_lvm.lv_extend", VG, LV, "128M")
    assert grown == {"old_size": 64 * MiB, "new_size": 128 * MiB}, grown
    same = call("xencluster_lvm.lv_extend", VG, LV, "128M")
    assert same == {"old_size": 128 * MiB, "new_size": 128 * MiB}, same
    shrink = refused("xencluster_lvm.lv_extend", VG, LV, "64M")
    assert "refusing to shrink" in shrink and "allow_shrink" in shrink, shrink
    half = refused("xencluster_lvm.lv_extend", VG, LV, "64M", "allow_shrink=True")  # one flag is not enough
    assert "fs_already_shrunk" in half, half
    lv = lvs()[key]
    assert lv["size"] == 128 * MiB, lv
    # lvextend keeps the last segment's stripes and stripe size
    assert {(s["type"], s["stripes"], s["stripe_size"]) for s in lv["segments"]} == {("striped", 2, 65536)}, lv

    # --- old data, a snapshot, new data: the snapshot still reads the old data --------------------------
    device, snap_device = f"/dev/{VG}/{LV}", f"/dev/{VG}/{SNAP}"
    old = write_random(device, "old")
    assert read_sha256(device) == old, f"{device} does not read back what was written to it"

    snap = call("xencluster_lvm.snapshot_create", VG, LV, SNAP, "32M", f"tags={json.dumps(['xc-test-snap'])}")
    assert (snap["name"], snap["origin"], snap["size"], snap["tags"], snap["active"]) == (
        SNAP, LV, 32 * MiB, ["xc-test-snap"], True
    ), snap  # fmt: skip
    assert isinstance(snap["snapshot_usage"], float) and snap["snapshot_usage"] < 5.0, snap  # fresh: (nearly) empty
    assert lvs()[key]["attr"][:1] == "o", lvs()[key]  # LVM marks LV an origin now

    new = write_random(device, "new")
    assert new != old
    usage = call("xencluster_lvm.snapshot_usage", VG, SNAP)
    assert (usage["origin"], usage["size"], usage["full"], usage["comment"]) == (LV, 32 * MiB, False, None), usage
    # 8 MiB of the origin changed: their old chunks (plus COW metadata) fill a quarter of 32 MiB
    assert isinstance(usage["usage_percent"], float) and 20.0 <= usage["usage_percent"] < 100.0, usage
    assert read_sha256(snap_device) == old, f"{snap_device} lost the data the origin had when it was taken"
    assert read_sha256(device) == new, f"{device} does not read back the new data"
    in_report = lvs()[snap_key]
    assert (in_report["origin"], in_report["tags"]) == (LV, ["xc-test-snap"]), in_report
    assert abs(in_report["snapshot_usage"] - usage["usage_percent"]) < 1.0, (in_report, usage)

    # --- what removal refuses ----------------------------------------------------------------------------
    origin_refusal = refused("xencluster_lvm.lv_remove", VG, LV)
    assert f"refusing to remove {key}" in origin_refusal, origin_refusal
    assert "has snapshots" in origin_refusal and SNAP in origin_refusal, origin_refusal
    assert "force=True" in origin_refusal, origin_refusal
    not_a_snapshot = refused("xencluster_lvm.snapshot_remove", VG, LV)
    assert "not a snapshot" in not_a_snapshot, not_a_snapshot

    held = call("xencluster_lvm.lv_create", VG, HELD, "8M")
    assert held["open"] is False, held
    try:
        hold_open(f"/dev/{VG}/{HELD}")
        lv = wait_open(held_key, True)
        assert lv["active"] is True, lv
        open_refusal = refused("xencluster_lvm.lv_remove", VG, HELD)
        assert f"refusing to remove {held_key}: it is open" in open_refusal, open_refusal
    finally:
        ssh(RELEASE)
    wait_open(held_key, False)
    assert call("xencluster_lvm.lv_remove", VG, HELD) == {
        "removed": True, "lv": held_key, "snapshots_removed": [], "forced": [],
    }  # fmt: skip

    left = lvs()
    assert sorted(left) == [key, snap_key], left  # the refusals removed nothing

    # --- the real removals, each idempotent ------------------------------------------------------------------
    gone = call("xencluster_lvm.snapshot_remove", VG, SNAP)
    assert gone == {"removed": True, "lv": snap_key, "origin": LV}, gone
    assert call("xencluster_lvm.snapshot_remove", VG, SNAP) == {"removed": False, "reason": "absent"}
    assert lvs()[key]["attr"][:1] != "o", lvs()[key]  # no longer an origin
    assert read_sha256(device) == new, f"removing the snapshot changed {device}"

    gone = call("xencluster_lvm.lv_remove", VG, LV)
    assert gone == {"removed": True, "lv": key, "snapshots_removed": [], "forced": []}, gone
    assert call("xencluster_lvm.lv_remove", VG, LV) == {"removed": False, "reason": "absent"}
    rep = call("xencluster_lvm.report")
    assert not [k for k in rep["lvs"] if k.startswith(f"{VG}/")], rep["lvs"]
    assert rep["vgs"][VG]["lv_count"] == 0, rep["vgs"][VG]
