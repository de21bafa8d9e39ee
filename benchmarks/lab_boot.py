#!/usr/bin/env python3
"""Benchmark the lab: image build time, boot-to-ready per node, host RAM.

    .venv/bin/python benchmarks/lab_boot.py [--nodes N] [--cold]

Boot numbers are measured in this run from stopped nodes (`down --hard`),
reusing their overlays. Without --cold the build time is the one recorded in
the cached image's manifest (the run that built it); with --cold the image is
rebuilt now. Host RAM is the summed RSS of the lab's QEMU processes plus the
drop in MemAvailable while they run. Results go to benchmarks/results/ as
JSON with the command and date that produced them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import cluster, config, image, nodes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def build_numbers(cold: bool) -> dict:
    started = time.monotonic()
    img = image.build(force=cold)
    manifest = json.loads((img / "manifest.json").read_text())
    return {
        "image_key": img.name,
        "measured_in_this_run": cold,
        "wall_s_this_run": round(time.monotonic() - started, 1),
        "build_total_s": manifest.get("total_s"),
        "build_steps_s": manifest.get("steps_s"),
        "built_at": manifest.get("built_at") or manifest.get("date"),
        "base_raw_bytes_allocated": (img / "base.raw").stat().st_blocks * 512,
    }


def boot_numbers(count: int) -> dict:
    cluster.down(hard=True)
    available_before = mem_available_kib()
    started = time.monotonic()
    data = cluster.up(count)
    wall = round(time.monotonic() - started, 1)
    per_node = {name: {k: info.get(k) for k in ("boot_to_ready_s", "ssh_after_s")}
                for name, info in data["nodes"].items()}
    qemu_rss = {node.name: rss_kib(nodes.pid(node)) // 1024 for node in nodes.running()}
    return {
        "nodes": count,
        "up_wall_s": wall,
        "per_node": per_node,
        "host_ram": {
            "qemu_rss_mib": qemu_rss,
            "qemu_rss_total_mib": sum(qemu_rss.values()),
            "mem_available_drop_mib": (available_before - mem_available_kib()) // 1024,
            "node_ram_mib_configured": config.NODE_RAM_MB,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="rebuild the image in this run")
    args = parser.parse_args()
    when = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "lab_boot",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": when.isoformat(timespec="seconds"),
        "host": {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(),
                 "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                        text=True, check=False).stdout.splitlines()[0]},
        "build": build_numbers(args.cold),
        "boot": boot_numbers(args.nodes),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"lab_boot-{when:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
