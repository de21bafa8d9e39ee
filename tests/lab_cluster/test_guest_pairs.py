"""Guests on real disk pairs, through Salt: a PVH guest on its pair (listed, resources, save/restore), md RAID1 in a guest minion.

Both guests get one leg per node at its stable path /dev/xencluster/<leg id>
(tests/lab_cluster/legs.py: LVs exported crosswise over iSCSI, unit serial =
leg id, linked by xencluster_disk's udev rules).

- ``probe`` (busybox + mdadm initramfs, lab/domu.py) mirrors its two legs and
  writes a numbered heartbeat every 2 s. It is created on node1, listed, its
  block devices read; then scheduled (credit2), ballooned, given a vCPU, saved
  and restored, and shut down cleanly. (A probe's live migration there and back
  on its pair is test_cluster_highstate.py's DW1 step, on web1.)
- ``mdg`` boots the lab image itself as a guest with a salt-minion (lab/guests.py).
  Through Salt, in the guest: create_mirror over its two legs with a 1 MiB
  bitmap chunk, fail and remove a leg, write while it is away, cap the resync
  speed at 1 MB/s and re_add the leg: the bitmap makes it resync only the few
  dirty chunks (seconds), not the whole leg (minutes at that speed), and both
  legs then hold the same data. Then backups of its leg on node1 while it runs
  (xencluster_backup, after the dom0's md auto-assembly is masked as the formula
  masks it): ext4 with 100 files, a full backup, 1 % of the files changed, an
  incremental backup that moves only that file, and a restore into a fresh leg
  that reproduces every file byte for byte.
"""

import json
import re
import time
from pathlib import Path

import pytest

from lab import guests as lab_guests
from lab import qemu
from lab.config import Node
from labcli import salt, salt_run
from legs import VG, call, make_pair, make_vgs, remove_pairs, run, stable_path

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

PROBE, MDG = "probe", "mdg"
HEARTBEAT = re.compile(r"HB ([0-9]+) ")
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pairs(lab_cluster):
    for node in ("node1", "node2"):
        call(node, "xencluster_disk.install_rules")
    made = [(PROBE, "disk0"), (MDG, "disk0")]
    try:
        make_vgs()
        make_pair(PROBE, "disk0", "64M")
        make_pair(MDG, "disk0", "128M")
        yield made
    finally:
        for node in ("node1", "node2"):
            for guest in (PROBE, MDG):
                salt(node, "cmd.run_all", json.dumps(["xl", "destroy", guest]), "python_shell=False")
        problems = remove_pairs(made)
        assert not problems, "cleanup failed:\n" + "\n".join(problems)


def legs_of(guest):
    return [stable_path(guest, "disk0", "node1"), stable_path(guest, "disk0", "node2")]


# xenconsoled names a log after the domain's name when it first sees it: a guest
# arriving by migration is "probe--incoming" then, so read every probe log.
PROBE_LOGS = ["find", "/var/log/xen/console", "-name", f"guest-{PROBE}*.log"]


def console(node):
    """The probe's console output on node (all its logs there)."""
    ret = salt(node, "cmd.run_all", json.dumps([*PROBE_LOGS, "-exec", "cat", "{}", "+"]),
               "python_shell=False")[node]  # fmt: skip
    return ret.get("stdout", "") if isinstance(ret, dict) else ""


def heartbeats(node):
    """Heartbeat numbers the probe wrote to its console on node."""
    return [int(n) for n in HEARTBEAT.findall(console(node))]


def wait_until(what, probe, timeout, interval=3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s; last seen: {last}")


def beating_on(node, above=0, timeout=120):
    """Wait for a heartbeat on node numbered above ``above``; return the newest."""

    def probe():
        beats = heartbeats(node)
        newest = max(beats, default=0)
        return newest > above, newest

    try:
        return wait_until(f"probe heartbeat above {above} on {node}", probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{probe_state(node)}") from None


# What a silent probe looks like from its dom0: is it there, running, its disks and its console
# attached (a console ring xenconsoled does not drain stops the guest at its next beat)?
PROBE_STATE = ("xl list; xl block-list {guest}; domid=$(xl domid {guest}); "
               "xenstore-ls /local/domain/$domid/console; pgrep -a xenconsoled; "
               "ls -la /var/log/xen/console; iscsiadm -m session; dmesg | tail -20")  # fmt: skip


def probe_state(node):
    try:
        ret = salt(node, "cmd.run_all", json.dumps(["sh", "-c", PROBE_STATE.format(guest=PROBE)]),
                   "python_shell=False").get(node)  # fmt: skip
    except AssertionError as exc:  # the state is a diagnosis: never hide the first failure
        ret = str(exc)
    text = ret.get("stdout", "") + ret.get("stderr", "") if isinstance(ret, dict) else str(ret)
    return f"--- {node} ---\n{text[-6000:]}"


def located():
    ret = salt_run("xencluster.locate", "tgt=node*", timeout=120)
    return ret["guests"], ret["double_runs"]


def start_probe():
    """The probe guest on node1, with fresh console logs; returns its first heartbeat."""
    config = lab_guests.probe_config(PROBE, legs_of(PROBE), Node(1))
    for node in ("node1", "node2"):
        run(node, [*PROBE_LOGS, "-delete"])
    created = call("node1", "xencluster_xl.create", f"config={json.dumps(config)}", timeout=300)
    assert created["name"] == PROBE, created
    return beating_on("node1")


def test_probe_guest_runs_on_its_disk_pair_and_is_listed(pairs):
    # Its live migration there and back (xencluster_xl.migrate, the runner's own call) is
    # proven on web1, a probe on the same kind of pair, by test_cluster_highstate.py's DW1 step.
    start_probe()

    listed = call("node1", "xencluster_xl.list_domains")[PROBE]
    assert listed["type"] == "pvh" and listed["state"] in ("running", "blocked", "runnable"), listed
    assert listed["memory"] == 128 * MIB, listed
    disks = call("node1", "xencluster_xl.block_list", PROBE)
    assert [(d["vdev"], d["target"], d["state"]) for d in disks] == [
        ("xvda", legs_of(PROBE)[0], "connected"), ("xvdb", legs_of(PROBE)[1], "connected")], disks
    assert located() == ({PROBE: ["node1"]}, []), "probe must be seen on node1 only"


def test_probe_guest_resources_save_restore_and_shutdown(pairs):
    if PROBE not in call("node1", "xencluster_xl.list_domains"):
        start_probe()  # the listing test left it on node1 unless it failed or ran alone

    sched = call("node1", "xencluster_xl.sched_credit2", PROBE, "weight=512", "cap=50")
    assert sched, sched
    shown = run("node1", ["xl", "sched-credit2", "-d", PROBE])["stdout"]
    assert re.search(rf"^{PROBE}\s+[0-9]+\s+512\s+50\b", shown, re.M), shown

    call("node1", "xencluster_xl.mem_set", PROBE, "96m")
    wait_until("balloon target 96 MiB", lambda: (
        (m := call("node1", "xencluster_xl.list_domains")[PROBE]["memory"]) == 96 * MIB, m), 60)

    refused = salt("node1", "xencluster_xl.vcpu_set", PROBE, "2")["node1"]
    assert "overcommmitting" in refused, refused  # a lab node has one physical CPU
    call("node1", "xencluster_xl.vcpu_set", PROBE, "2", "allow_overcommit=True")
    # the guest onlines the hot-plugged vCPU itself, a moment later
    wait_until("two online vCPUs", lambda: (
        (n := run("node1", ["xl", "list", PROBE])["stdout"].splitlines()[-1].split()[3]) == "2", n), 60)

    image = "/var/tmp/xc-probe.save"
    try:
        before = max(heartbeats("node1"))
        call("node1", "xencluster_xl.save", PROBE, image, "overwrite=True", timeout=300)
        assert PROBE not in call("node1", "xencluster_xl.list_domains")
        call("node1", "xencluster_xl.restore", image, timeout=300)
        assert beating_on("node1", above=before) > before
    finally:
        run("node1", ["rm", "-f", image])

    call("node1", "xencluster_xl.shutdown", PROBE, "timeout=120", timeout=240)
    assert PROBE not in call("node1", "xencluster_xl.list_domains")
    log = console("node1")
    assert "probe: poweroff" in log, log[-2000:]


# --- md RAID1 inside a guest minion ------------------------------------------------------


def guest_call(fun, *args, timeout=300):
    return call(MDG, fun, *args, timeout=timeout)


def guest_run(argv, ok=(0,)):
    return run(MDG, argv, ok=ok)


def array_status():
    return guest_call("xencluster_md.status", "/dev/md0")["/dev/md0"]


# sha256 of MiB <skip>..<skip>+<count> of the array and of each member at the same place in
# the data (md's per-member data offset, in sectors): one call, as each costs ~15 s in the guest.
SHAS = ('sum() {{ dd if="$1" bs=1M skip="$2" count={count} iflag=direct status=none | sha256sum; }}; '
        'echo "/dev/md0 $(sum /dev/md0 {skip})"; '
        'for leg in "$@"; do k=${{leg##*/}}; s=$(cat /sys/block/md0/md/dev-$k/offset); '
        '[ $((s % 2048)) -eq 0 ] || {{ echo "$leg offset $s"; exit 1; }}; '
        'echo "$leg $(sum "$leg" $((s / 2048 + {skip})))"; done')  # fmt: skip


def shas_at(legs, skip_mib, mib):
    """{device: sha256} of the array and its legs over the same data."""
    out = guest_run(["sh", "-c", SHAS.format(skip=skip_mib, count=mib), "shas", *legs])["stdout"]
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


@pytest.fixture(scope="module")
def guest_minion(pairs, lab_cluster):
    node = Node(1)
    stamp = qemu.read_stamp(node)
    minion = lab_guests.GuestMinion(MDG, 10)
    lab_guests.seed_minion(node, Path(stamp["dir"]) / "id_ed25519", minion)
    config = lab_guests.minion_config(node, minion, legs_of(MDG))
    created = call("node1", "xencluster_xl.create", f"config={json.dumps(config)}", timeout=300)
    assert created["name"] == MDG, created
    try:
        # A long timeout, not many short pings: a minion that has just started answers its first
        # jobs slowly (~30 s under nested TCG), and every ping that times out adds a find_job
        # job that slows it further.
        wait_until("the guest minion answers test.ping", lambda: (
            (r := salt(MDG, "test.ping", timeout=90).get(MDG)) is True, r), 480, interval=5)
        # A fresh guest gets the module now; that it loads is the first xencluster_md call's
        # business (call() fails on "is not available"): no sys.list_modules, ~15 s in the guest.
        synced = salt(MDG, "saltutil.sync_modules", timeout=120).get(MDG)
        assert isinstance(synced, list), synced
        yield MDG
    finally:
        # Destroyed, not shut down: its legs are removed right after (``pairs``), and an orderly
        # Debian shutdown under nested TCG costs ~100 s of the lab tier's budget; the probe's
        # test proves xencluster_xl.shutdown.
        salt("node1", "xencluster_xl.destroy", MDG)


def test_raid1_in_a_guest_resyncs_only_what_changed(guest_minion):
    legs = ["/dev/xvdb", "/dev/xvdc"]
    made = guest_call("xencluster_md.create_mirror", "/dev/md0", ",".join(legs), "name=disk0",
                      "bitmap_chunk=1M")  # fmt: skip
    assert made["changed"] is True and made["status"]["bitmap"] == "internal", made
    guest_call("xencluster_md.set_sync_speed", "min_kbs=50000", "max_kbs=200000", "md=/dev/md0")
    # the initial resync's end, waited for in the guest (md's own wait: no polling from here)
    guest_run(["sh", "-c", "mdadm --wait /dev/md0; dd if=/dev/urandom of=/dev/md0 bs=1M count=8 oflag=direct "
               "status=none"])  # fmt: skip (the line's status is dd's: --wait exits 1 with nothing to wait for)
    assert array_status()["sync"] is None
    guest_call("xencluster_md.fail_leg", "/dev/md0", legs[1])
    guest_call("xencluster_md.remove_leg", "/dev/md0", legs[1])
    degraded = array_status()
    assert "degraded" in degraded["state"], degraded
    assert [leg["state"] for leg in degraded["legs"]].count("missing") == 1, degraded

    # written while the leg is away: only these chunks are dirty in the bitmap
    bitmap = guest_run(["sh", "-c", "dd if=/dev/urandom of=/dev/md0 bs=1M seek=32 count=4 oflag=direct status=none "
                        f"&& mdadm --examine-bitmap {legs[0]}"])["stdout"]  # fmt: skip
    bits, dirty = map(int, re.search(r"Bitmap : ([0-9]+) bits \(chunks\), ([0-9]+) dirty", bitmap).groups())
    assert bits >= 100 and 0 < dirty <= 8, bitmap

    # 1 MB/s: a full resync of 128 MiB would take over two minutes
    guest_call("xencluster_md.set_sync_speed", "min_kbs=1000", "max_kbs=1000", "md=/dev/md0")
    started = time.monotonic()
    back = guest_call("xencluster_md.re_add", "/dev/md0", legs[1])
    assert back["changed"] is True and back["method"] == "re-add", back
    clean = wait_until("bitmap resync", lambda: (
        (s := array_status())["sync"] is None and "degraded" not in s["state"], s), 90, interval=2)
    took = time.monotonic() - started
    assert took < 60, f"re-add took {took:.0f} s: a full resync, not a bitmap one? {clean}"
    assert sorted(leg["state"] for leg in clean["legs"]) == ["active", "active"], clean

    # both legs hold what was written while one was away
    shas = shas_at(legs, 32, 4)
    assert sorted(shas) == sorted(["/dev/md0", *legs]) and len(set(shas.values())) == 1, shas


# --- backups of a running guest's leg (xencluster_backup on the dom0) -----------------------

BACKUP_DEST = "/var/tmp/xc-lab-backup/mdg/disk0"  # node1's root fs: the lab has no backup volume
FRESH = "rst.disk0.node1"  # a fresh leg to restore into
MD_RULE_MASK = "/etc/udev/rules.d/64-md-raid-assembly.rules"
FILES = 100


def sums(text):
    """{file: sha256} from sha256sum's lines."""
    return {name: digest for digest, name in (line.split() for line in text.splitlines())}


def backup(**extra):
    args = [f"{k}={v}" for k, v in extra.items()]
    ret = call("node1", "xencluster_backup.backup_leg", VG, "mdg.disk0.node1", BACKUP_DEST, "fstype=ext4",
               f"partner={stable_path(MDG, 'disk0', 'node2')}", "allow_root_fs=True", *args, timeout=900)  # fmt: skip
    assert isinstance(ret, dict) and ret["result"] is True, ret
    assert all(step["ok"] for step in ret["cleanup"]), ret["cleanup"]
    assert ret["snapshot"]["full"] is False, ret
    return ret


# The fresh leg assembled read-only in the dom0 (as a guest would see it), its files summed, and
# everything undone whatever failed: one call (each costs seconds under TCG).
RESTORED_SUMS = ('md=/dev/md/xcrst; mdadm --assemble --readonly --run $md "$1" || exit 1; '
                 'mkdir -p /mnt/xcrst && mount -o ro $md /mnt/xcrst && (cd /mnt/xcrst && sha256sum f*); rc=$?; '
                 'umount /mnt/xcrst 2>/dev/null; mdadm --stop $md || rc=1; exit $rc')  # fmt: skip


def restored_sums():
    """{file: sha256} of the fresh leg's filesystem."""
    return sums(run("node1", ["sh", "-c", RESTORED_SUMS, "restored", f"/dev/{VG}/{FRESH}"])["stdout"])


def test_backup_moves_only_changed_files_and_restores_byte_for_byte(guest_minion):
    """A running guest's ext4 on its RAID1: full backup, 1% of the files changed, incremental, restore."""
    # the mirror of the test above (idempotent: also when this test runs alone)
    guest_call("xencluster_md.create_mirror", "/dev/md0", "/dev/xvdb,/dev/xvdc", "name=disk0", "bitmap_chunk=1M")
    try:
        guest_run(["sh", "-c", "mkfs.ext4 -q -F /dev/md0 && mkdir -p /mnt/data && mount /dev/md0 /mnt/data && "
                   f"for i in $(seq 1 {FILES}); do head -c 65536 /dev/urandom > /mnt/data/f$i; done && sync"])  # fmt: skip
        run("node1", ["mkdir", "-p", BACKUP_DEST])  # the runner's job: the target's volume, mounted
        # This module runs before the formula: dom0's udev still assembles md arrays by itself, and
        # would take the snapshot (found here: md127 holding it open). Refused before any change:
        dry = call("node1", "xencluster_backup.backup_leg", VG, "mdg.disk0.node1", BACKUP_DEST, "fstype=ext4",
                   "allow_root_fs=True", "dry_run=True")  # fmt: skip
        assert any("md auto-assembly is active" in reason for reason in dry["refused"]), dry
        # ... until it is masked as xencluster.hygiene masks it
        run("node1", ["sh", "-c", f"cp /dev/null {MD_RULE_MASK} && udevadm control --reload"])
        first = backup()
        assert first["rsync"]["transferred"] == FILES and first["filesystem"]["type"] == "ext4", first

        # 1% of the files changed; what the guest then holds
        expected = sums(guest_run(["sh", "-c", "head -c 65536 /dev/urandom > /mnt/data/f7 && sync && "
                                   "cd /mnt/data && sha256sum f*"])["stdout"])  # fmt: skip
        second = backup()
        assert second["backup"] != first["backup"] and second["link_dest"], second
        # only the changed file moved; the 99 others are hard links to the first backup
        assert second["rsync"]["transferred"] == 1, second["rsync"]
        assert second["rsync"]["transferred_size"] == 65536, second["rsync"]
        listed = call("node1", "xencluster_backup.list_backups", BACKUP_DEST)
        assert [b["name"] for b in listed["backups"]] == [second["backup"], first["backup"]], listed
        assert listed["latest"] == second["backup"], listed

        # a fresh leg with an md superblock (a new pair, mirrored once: here by the dom0), restored into
        call("node1", "xencluster_lvm.lv_create", VG, FRESH, "128M")
        run("node1", ["sh", "-c", 'mdadm --create /dev/md/xcrst --level=1 --raid-devices=2 --metadata=1.2 '
                      '--bitmap=internal --run --force "$1" missing && mdadm --stop /dev/md/xcrst', "create",
                      f"/dev/{VG}/{FRESH}"])  # fmt: skip
        restored = call("node1", "xencluster_backup.restore_leg", VG, FRESH, BACKUP_DEST, "mkfs=True",
                        timeout=900)  # fmt: skip
        assert isinstance(restored, dict) and restored["result"] is True, restored
        assert restored["backup"] == second["backup"], restored
        assert restored_sums() == expected
    finally:
        guest_run(["umount", "/mnt/data"], ok=(0, 1, 32))
        run("node1", ["sh", "-c", f"rm -rf /var/tmp/xc-lab-backup {MD_RULE_MASK} && udevadm control --reload"])
