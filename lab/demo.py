"""The main job of `make demo`, run on the lab cluster through the host master.

It ships the extension to the dom0s the way an operator would (saltutil sync),
shows what xencluster sees on each dom0, converges the cluster with a highstate
of every dom0 (the cluster model: pillar/xencluster/lab.sls), then shows where
the guests run and what `xencluster.verify` finds. A second run finds the
cluster converged and changes nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time

from . import config, master
from .errors import LabError

HIGHSTATE_TIMEOUT = 2400  # the first run installs packages, makes VGs and legs, boots the guests (TCG)


def _salt_json(argv: list[str], timeout: int = 300) -> dict:
    proc = master.salt([*argv, "--out=json", f"--timeout={timeout}"], timeout=timeout + 60)
    try:
        return master.minion_returns(proc.stdout or "")
    except json.JSONDecodeError as exc:
        raise LabError(f"salt {' '.join(argv)} gave no JSON: {proc.stderr.strip()[-300:]}") from exc


def _salt_run_json(argv: list[str], timeout: int = 300, check: bool = True) -> tuple[int, dict]:
    proc = master.salt_run([*argv, "--out=json", f"--timeout={timeout}"], timeout=timeout + 60, check=check)
    return proc.returncode, json.loads(proc.stdout or "{}")


def _check_every_node_answered(what: str, result: dict, names: list[str]) -> None:
    missing = [name for name in names if name not in result]
    if missing:
        raise LabError(f"{what}: no answer from {', '.join(missing)}")


def _summarise_node(name: str, info: dict, lvm: dict) -> str:
    xen = f"{info['xen_major']}.{info['xen_minor']}{info.get('xen_extra', '')}"
    return (f"  {name}: Xen {xen}, {info.get('nr_cpus')} cpu, "
            f"{info.get('total_memory')} MiB total / {info.get('free_memory')} MiB free; "
            f"LVM: {len(lvm['pvs'])} PVs, {len(lvm['vgs'])} VGs, {len(lvm['lvs'])} LVs")


def run(names: list[str]) -> None:
    target = ",".join(names)
    print(f"== dom0s answering through the master: {target}")
    pings = _salt_json(["-L", target, "test.ping"])
    _check_every_node_answered("test.ping", pings, names)
    print("== syncing the extension to the dom0s (saltutil.sync_all, saltutil.sync_runners)")
    _salt_json(["-L", target, "saltutil.sync_all"])
    master.salt_run(["saltutil.sync_runners"], timeout=120, check=True)
    print("== what xencluster sees on each dom0")
    infos = _salt_json(["-L", target, "xencluster_xl.info"])
    reports = _salt_json(["-L", target, "xencluster_lvm.report"])
    _check_every_node_answered("xencluster_xl.info", infos, names)
    for name in names:
        print(_summarise_node(name, infos[name], reports[name]))
    members = _model_members(target, names)
    print("== converging the cluster: state.highstate on every dom0 (the first run takes minutes under TCG)")
    began = time.monotonic()
    ran = _salt_json(["-L", ",".join(members), "state.highstate"], timeout=HIGHSTATE_TIMEOUT)
    _check_every_node_answered("state.highstate", ran, members)
    failed = {}
    for name in members:
        line, failures = _summarise_highstate(name, ran[name])
        print(line)
        failed.update({f"{name}: {state}": comment for state, comment in failures.items()})
    print(f"  ({time.monotonic() - began:.0f} s)")
    if failed:
        raise LabError("the highstate failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    print("== where guests run across the cluster (salt-run xencluster.locate)")
    _, located = _salt_run_json(["xencluster.locate", f"tgt={target}", "tgt_type=list"])
    for guest, where in sorted(located.get("guests", {}).items()):
        print(f"  {guest}: {', '.join(where or []) or 'not running'}")
    if located.get("double_runs"):
        raise LabError(f"guest(s) running on two nodes: {located['double_runs']}")
    print("== what the cluster check finds (salt-run xencluster.verify)")
    code, verified = _salt_run_json(["xencluster.verify"], timeout=120, check=False)
    for finding in verified.get("findings", []):
        print(f"  {finding['severity']:8} {finding['code']:20} {finding.get('message', '')}")
    if code != 0 or verified.get("ok") is not True:
        raise LabError(f"xencluster.verify found something serious (exit {code})")
    print("== demo done: the cluster is converged, each guest runs once, verify finds nothing serious")


def _model_members(target: str, names: list[str]) -> list[str]:
    """The running dom0s that are nodes of the cluster model their pillar holds; the others are
    said and left alone (python -m lab up 3 boots a node3 that pillar/xencluster/lab.sls lacks)."""
    nodes = _salt_json(["-L", target, "pillar.get", "xencluster:nodes"])
    members = [name for name in names if name in (nodes.get(name) or {})]
    for name in sorted(set(names) - set(members)):
        print(f"  {name}: not a node of the cluster model in its pillar: not converged")
    if not members:
        raise LabError("no running dom0 is a node of the cluster model (pillar xencluster:nodes)")
    return members


def _summarise_highstate(name: str, ret) -> tuple[str, dict]:
    """One line for a dom0's highstate, and {state id: comment} of the states that failed."""
    if not isinstance(ret, dict):  # render errors come back as a list of strings
        return f"  {name}: did not run", {"render": ret}
    states = list(ret.values())
    failures = {s.get("__id__", "?"): s.get("comment", "") for s in states if s.get("result") is False}
    changed = sum(1 for s in states if s.get("changes"))
    return f"  {name}: {len(states)} states, {changed} changed, {len(failures)} failed", failures


def main() -> int:
    count = int(os.environ.get("NODES", config.DEFAULT_NODES))  # same variable as `make lab-up`
    try:
        run([node.name for node in config.nodes(count)])
    except LabError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
