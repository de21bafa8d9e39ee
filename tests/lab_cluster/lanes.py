"""Run the lab tier as two lanes at once, each on a two-node cluster of its own.

One lane is the whole-cluster scenario (test_cluster_highstate.py: highstate from
bare dom0s, then migrate, evacuate, restore, recover...), the other every other lab
module. They share nothing but the image cache: each lane has its own lab
directory, SSH ports and salt-master ports, so neither can see or stop the
other's nodes. Each lab node is one TCG vCPU and a lane mostly waits on one node
at a time, so on a 2-core machine one lane alone leaves about 40 % of the CPU
idle; two lanes use it.

    python tests/lab_cluster/lanes.py [pytest options...]

The start is staggered: four dom0s booting and starting their minions at once
starve each other past the lab's readiness waits. So each lane's cluster is
booted from wiped disks, with its master, before that lane's tests start, one
lane after the other (the second boots while the first lane's tests run); the
lane's session takes it over as its own (XENCLUSTER_LAB_FRESH=1: it starts from
wiped disks, and is stopped and wiped at the end).

Each lane's output is printed as it comes, every line prefixed with the lane's
name; each lane's closing summary is printed again at the end. The exit status
is the first non-zero status of the lanes (0 when both pass). The image is built
(or found in the cache) first, once, so that the lanes do not both build it.
Both labs are stopped and wiped at the end, whatever happened (unless
XENCLUSTER_LAB_KEEP=1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WHOLE_CLUSTER = HERE / "test_cluster_highstate.py"


@dataclass(frozen=True)
class Lane:
    name: str
    targets: tuple[str, ...]
    # Environment of the lane's lab, on top of the caller's (None: the caller's lab as is).
    lab_env: dict | None


def lab_base() -> Path:
    return Path(os.environ.get("XENCLUSTER_LAB", "/var/tmp/xencluster-lab"))


def lanes() -> list[Lane]:
    base = lab_base()
    # The second lab beside the first (a short path: AF_UNIX socket paths are limited),
    # on ports of its own, sharing the first lab's image cache.
    second = {
        "XENCLUSTER_LAB": f"{base}-2",
        "XENCLUSTER_LAB_CACHE": os.environ.get("XENCLUSTER_LAB_CACHE", str(base / "cache")),
        "XENCLUSTER_LAB_SSH_BASE": os.environ.get("XENCLUSTER_LAB2_SSH_BASE", "2240"),
        "XENCLUSTER_LAB_PUBLISH_PORT": os.environ.get("XENCLUSTER_LAB2_PUBLISH_PORT", "4525"),
        "XENCLUSTER_LAB_RET_PORT": os.environ.get("XENCLUSTER_LAB2_RET_PORT", "4526"),
    }
    # The longer lane first: its tests start while the second lane's cluster boots.
    return [
        Lane("parts", (str(HERE), f"--ignore={WHOLE_CLUSTER}"), None),
        Lane("cluster", (str(WHOLE_CLUSTER),), second),
    ]


def pytest_argv(lane: Lane, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *lane.targets, "-m", "lab and not lab_provision", "-p", "no:cacheprovider", *extra]


def lane_env(lane: Lane) -> dict:
    env = dict(os.environ)
    env.update(lane.lab_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    # Its minions start while the other lane's nodes work: wait longer for their answers.
    env.setdefault("XENCLUSTER_LAB_MINION_TIMEOUT", "600")
    return env


def run_lab(lane: Lane | None, *argv: str, check: bool = True) -> int:
    """``python -m lab ARGV`` for lane's lab (the caller's lab for None), its output relayed."""
    env = lane_env(lane) if lane else dict(os.environ)
    prefix = f"[{lane.name}] " if lane else ""
    proc = subprocess.run([sys.executable, "-m", "lab", *argv], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    sys.stdout.write("".join(f"{prefix}lab {argv[0]}: {line}\n" for line in proc.stdout.splitlines()))
    sys.stdout.flush()
    if check and proc.returncode != 0:
        raise LaneError(f"{prefix}python -m lab {' '.join(argv)} exited {proc.returncode}")
    return proc.returncode


class LaneError(Exception):
    pass


def boot(lane: Lane) -> None:
    """The lane's cluster from wiped disks, its master up and every minion answering."""
    run_lab(lane, "down", "--hard", "--wipe")
    run_lab(lane, "up", "2")
    run_lab(lane, "master")


def relay(name: str, stream, sink: list[str], lock: threading.Lock) -> None:
    for line in stream:
        sink.append(line)
        with lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


def summary(lines: list[str]) -> list[str]:
    """pytest's closing part: from its short test summary (or its last line) on."""
    starts = [i for i, line in enumerate(lines) if "short test summary info" in line]
    return lines[starts[-1]:] if starts else lines[-1:]


def start(lane: Lane, extra: list[str], lock: threading.Lock):
    env = dict(lane_env(lane), XENCLUSTER_LAB_FRESH="1")
    proc = subprocess.Popen(pytest_argv(lane, extra), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=relay, args=(lane.name, proc.stdout, lines, lock), daemon=True)
    reader.start()
    return proc, reader, lines


def run_lanes(extra: list[str], boot_lane=boot) -> int:
    lock = threading.Lock()
    running, results = [], []
    try:
        for lane in lanes():
            began = time.monotonic()
            try:
                boot_lane(lane)
            except LaneError as exc:
                print(exc)
                results.append((lane, 3, [f"{exc}\n"], time.monotonic() - began))
                continue
            running.append((lane, *start(lane, extra, lock), began))
        for lane, proc, reader, lines, began in running:
            code = proc.wait()
            reader.join()
            results.append((lane, code, lines, time.monotonic() - began))
    finally:
        for _lane, proc, *_rest in running:  # interrupted: no lane outlives us
            if proc.poll() is None:
                proc.terminate()
    for lane, code, lines, took in results:
        print(f"\n======== lane {lane.name}: exit {code} after {took:.0f} s ========")
        sys.stdout.write("".join(summary(lines)))
    return next((code for _lane, code, _lines, _took in results if code != 0), 0)


def stop_all() -> None:
    """Every lane's lab stopped and wiped (a no-op for one its session already stopped)."""
    if os.environ.get("XENCLUSTER_LAB_KEEP"):
        return
    for lane in lanes():
        run_lab(lane, "down", "--hard", "--wipe", check=False)


def main(argv: list[str]) -> int:
    run_lab(None, "build")
    try:
        return run_lanes(argv)
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
