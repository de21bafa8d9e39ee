"""The main job of `make demo`, run on the lab cluster through the host master.

It ships the extension to the dom0s the way an operator would (saltutil sync),
then shows what xencluster sees on each dom0 and across the cluster. It grows
as features land.
"""

from __future__ import annotations

import json
import os
import sys

from . import config, master
from .errors import LabError


def _salt_json(argv: list[str], timeout: int = 300) -> dict:
    proc = master.salt([*argv, "--out=json", f"--timeout={timeout}"], timeout=timeout + 60)
    try:
        return master.minion_returns(proc.stdout or "")
    except json.JSONDecodeError as exc:
        raise LabError(f"salt {' '.join(argv)} gave no JSON: {proc.stderr.strip()[-300:]}") from exc


def _salt_run_json(argv: list[str], timeout: int = 300) -> dict:
    proc = master.salt_run([*argv, "--out=json", f"--timeout={timeout}"], timeout=timeout + 60, check=True)
    return json.loads(proc.stdout or "{}")


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
    print("== where guests run across the cluster (salt-run xencluster.locate)")
    located = _salt_run_json(["xencluster.locate", f"tgt={target}", "tgt_type=list"])
    print(json.dumps(located, indent=2, sort_keys=True))
    if located.get("double_runs"):
        raise LabError(f"guest(s) running on two nodes: {located['double_runs']}")
    print("== demo done: both dom0s answer and run the extension")


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
