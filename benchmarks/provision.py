#!/usr/bin/env python3
"""Benchmark provisioning in the lab: time-to-ready of the pillar guest svc1 and its breakdown.

    .venv/bin/python benchmarks/provision.py [--guest svc1] [--node node1]

Needs the lab converged by its highstate (`make demo`, or the lab tier's highstate module
stopped before its migrations) with the master up. If the guest is provisioned already, it
is first deprovisioned (`salt-run xencluster.deprovision <guest> confirm=True`) and its
empty legs made again (the leg state), so every run measures the same work. Then the
request is fired as an operator would, on a dom0: `salt-call event.send
xencluster/guest/provision '{"guest": ...}'`, and the master's event bus is read from here:

* time-to-ready: from the event fired to the runner's `minion` step (the guest minion
  started and answered a ping), and to the end (`done`, after the guest's highstate);
* the breakdown: each step's own seconds, from the runner's step events.

The result goes to benchmarks/results/provision-<date>.json with the command and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TAG = "xencluster/guest/provision"


def lab(*argv, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def provisioned(guest: str) -> bool:
    proc = lab("salt-run", "xencluster.locate", "--out=json", timeout=300)
    located = json.loads(proc.stdout or "{}")
    return bool((located.get("guests") or {}).get(guest))


def reset(guest: str) -> None:
    """Deprovision, then the empty legs back (the guest stays in pillar)."""
    proc = lab("salt-run", "xencluster.deprovision", guest, "confirm=True", "--out=json", timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"deprovision {guest} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    proc = lab("salt", "node[12]", "state.single", "xencluster_leg.node_legs", "name=xencluster-legs",
               "--out=json", "--timeout=600", timeout=900)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the leg state failed:\n{proc.stdout[-3000:]}")


def measure(guest: str, node: str, timeout: float) -> dict:
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.utils.event  # pylint: disable=import-outside-toplevel
    from lab.master import CONFIG_FILE  # pylint: disable=import-outside-toplevel

    opts = salt.config.client_config(str(CONFIG_FILE))
    prefix = f"xencluster/provision/{guest}/"
    arrivals, steps = {}, []
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        fired = time.monotonic()
        proc = lab("ssh", node, f"salt-call --out=json event.send {TAG} '{json.dumps({'guest': guest})}'")
        if proc.returncode != 0:
            raise SystemExit(f"event.send on {node} failed: {proc.stderr[-2000:]}")
        deadline = fired + timeout
        while time.monotonic() < deadline:
            event = bus.get_event(wait=5, tag=prefix, full=True)
            if not event:
                continue
            name = event["tag"][len(prefix):]
            arrivals[name] = round(time.monotonic() - fired, 1)
            if name in ("done", "failed"):
                final = event["data"]
                break
            # what each step did (the install's arrays, filesystems, OS): a run that skipped work
            # is visible as such, not only as a short time
            steps.append({"step": event["data"]["step"], "seconds": event["data"]["seconds"],
                          "at_s": arrivals[name], "detail": str(event["data"].get("detail"))[:1200]})  # fmt: skip
        else:
            raise SystemExit(f"no done/failed event within {timeout} s; saw {sorted(arrivals)}")
    if final.get("result") is not True:
        raise SystemExit(f"provisioning failed: {final.get('message')}")
    return {"time_to_ready_s": arrivals.get("minion"), "time_to_done_s": arrivals.get("done"),
            "runner_seconds": final.get("seconds"), "steps": steps}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", default="svc1")
    parser.add_argument("--node", default="node1", help="the dom0 that fires the event")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if provisioned(args.guest):
        reset(args.guest)
    started = dt.datetime.now(dt.timezone.utc)
    result = measure(args.guest, args.node, args.timeout)
    doc = {"benchmark": "provision", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "date": started.isoformat(timespec="seconds"), "git": provenance.git(), "host": provenance.host(),
           "guest": args.guest, "fired_on": args.node, **result}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"provision-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
