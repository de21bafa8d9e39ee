"""The lab cluster: bring N nodes up (resumably), restart one, stop all, report status.

Python API for fixtures: up(count), ssh(name, argv), restart(name), link(name, nic, up), down(),
status().
"""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from lab import config, master, nodes, preflight, qemu, state, switch, wait
from lab.config import Node
from lab.errors import LabError
from lab.procs import Log

NODE_TOOLS = ("qemu-system-x86_64", "qemu-img", "vde_switch", "socat", "ssh")


def image_dir(build: bool = False, log: Log = print) -> Path:
    image = nodes.image_module()
    current = image.current()
    if current is not None:
        return Path(current)
    if not build:
        raise LabError("the dom0 image is not built: run `python -m lab build` first (or `python -m lab up --build`)")
    return Path(image.build(log=log))


def ssh(node_name: str, argv: Sequence[str] | str, timeout: float = 60, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command on a node (argv is quoted exactly; a str is a shell line)."""
    return nodes.ssh(config.node_by_name(node_name), argv, timeout=timeout, check=check, input=input)


# --- up ------------------------------------------------------------------------------


def _socket_paths(wanted: Sequence[Node]) -> list[Path]:
    # vde plugs create their own sockets inside the switch dir; leave room for them.
    paths = [path for sw in switch.ALL for path in (sw.ctl, sw.sock / ".01234567-00000")]
    for node in wanted:
        paths += [node.monitor, node.console_socket]
    return paths


def plan_up(wanted: Sequence[Node], log: Log) -> dict:
    """Which wanted nodes run already (reuse) and which must start; removes stale pidfiles."""
    reuse, start = {}, []
    for node in wanted:
        pid = nodes.pid(node, log)
        if pid:
            reuse[node] = pid
        else:
            start.append(node)
    return {"reuse": reuse, "start": start, "fresh": {}, "new_disks": []}


def plan_disks(plan: dict, img: Path) -> None:
    """For nodes to start: whose overlay is stale (fresh disks), who needs new disks."""
    for node in plan["start"]:
        reason = qemu.stale_disks_reason(node, img)
        if reason:
            plan["fresh"][node] = reason
    plan["new_disks"] = [node for node in plan["start"] if node in plan["fresh"] or not node.overlay.exists()]


def preflight_up(wanted: Sequence[Node], img: Path, plan: dict) -> None:
    preflight.require_tools(NODE_TOOLS)
    preflight.require_files([img / name for name in qemu.IMAGE_FILES],
                            "the image is incomplete: `python -m lab build --force`")
    preflight.require_qemu_safe_paths([config.RUN_DIR, img])
    preflight.require_short_socket_paths(_socket_paths(wanted))
    preflight.require_free_ports([(node.ssh_port, f"ssh to {node.name}") for node in plan["start"]])
    count = len(plan["new_disks"])
    preflight.require_disk(
        config.LAB_DIR, count * config.NODE_DISK_RESERVE_MB * 2**20,
        f"{count} new node(s)' overlays and data disks ({config.NODE_DISK_RESERVE_MB} MiB each)",
    )


def _record_header(img: Path | None, count: int, switch_pids: dict[switch.Switch, int]) -> None:
    data = state.load()
    if img is not None:  # None: nothing started, the recorded image stays
        data.update({"image_key": img.name, "image_dir": str(img)})
    data.update({
        "node_count": max(count, len(nodes.running())),
        **{sw.state_key: {"pid": pid, "sock": str(sw.sock), "hub": sw.hub} for sw, pid in switch_pids.items()},
        "ports": {
            "ssh": {node.name: node.ssh_port for node in config.nodes(count)},
            "master_publish": config.MASTER_PUBLISH_PORT,
            "master_ret": config.MASTER_RET_PORT,
        },
    })
    state.save(data)


def _start_node(node: Node, img: Path, fresh_reason: str | None, log: Log) -> float:
    if fresh_reason:
        qemu.remove_disks(node)
        log(f"{node.name}: {fresh_reason}: fresh overlay and data disks")
    made = qemu.prepare_disks(node, img)
    if "overlay" in made and master.forget_minion_key(node.name):
        log(f"{node.name}: new overlay, new minion key: dropped the master's old key for it")
    boot_dir = nodes.image_dir_of(node) or img  # the pinned copy of the image its overlay uses
    started_at = time.time()
    pid = qemu.start(node, boot_dir)
    image_key = (qemu.read_stamp(node) or {}).get("key", img.name)
    state.update_node(node.name, pid=pid, started_at=started_at, image_key=image_key,
                      ssh_port=node.ssh_port, mgmt_mac=node.mac(1), san_mac=node.mac(2),
                      san_addr=node.san_addr, service_macs=[node.mac(nic) for nic in config.SERVICE_NICS],
                      links_down=[], boot_to_ready_s=None, ssh_after_s=None)
    made_text = f", new {'/'.join(made)}" if made else ""
    log(f"{node.name}: QEMU started (pid {pid}, ssh 127.0.0.1:{node.ssh_port}{made_text})")
    return started_at


def _wait_all(waiting: dict[Node, float], booted: dict[Node, float], log: Log) -> dict[str, dict]:
    """Wait for every node in parallel; record each as it becomes ready.

    booted: reused nodes whose boot-to-ready time is already recorded; they are only
    checked (still answering), and keep their recorded times.
    """
    results: dict[str, dict] = {}
    failures: list[LabError] = []

    def one(node: Node, started_at: float) -> None:
        try:
            times = nodes.wait_ready(node, started_at)
        except LabError as exc:
            failures.append(exc)
            return
        if node in booted:
            log(f"{node.name}: ready (booted in {booted[node]} s)")
            return
        state.update_node(node.name, **times)
        results[node.name] = times
        log(f"{node.name}: ready {times['boot_to_ready_s']} s after start (ssh after {times['ssh_after_s']} s)")

    pool = ThreadPoolExecutor(max_workers=max(1, len(waiting)))
    futures = [pool.submit(one, node, started_at) for node, started_at in waiting.items()]
    try:
        concurrent.futures.wait(futures)
    except KeyboardInterrupt:
        wait.cancelled.set()  # the worker threads stop at their next poll
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if failures:
        details = "\n".join(exc.details for exc in failures if exc.details)
        message = "; ".join(str(exc) for exc in failures)
        raise LabError(f"{message} (started nodes keep running; `python -m lab up` resumes)", details)
    return results


def up(count: int = config.DEFAULT_NODES, build: bool = False, log: Log = print) -> dict:
    """Start the SAN and service switches and nodes 1..count, reuse what runs, wait until all are ready."""
    wanted = config.nodes(count)
    with state.locked("up"):
        preflight.require_root("up")
        plan = plan_up(wanted, log)
        # Running nodes need no image: a second `up` is a no-op even if the image
        # key moved on since they booted.
        img = image_dir(build, log) if plan["start"] else None
        if img is not None:
            plan_disks(plan, img)
            preflight_up(wanted, img, plan)
        config.RUN_DIR.mkdir(parents=True, exist_ok=True)
        _warn_lost_links(plan["reuse"], log)
        switch_pids = {sw: switch.ensure(sw, log) for sw in switch.ALL}
        _record_header(img, count, switch_pids)
        recorded = state.load().get("nodes", {})
        waiting: dict[Node, float] = {}
        booted: dict[Node, float] = {}
        for node, pid in plan["reuse"].items():
            log(f"{node.name}: already running (pid {pid}), reused")
            if plan["start"]:
                _warn_old_image(node, img, log)
            _warn_no_service_links(node, pid, log)
            record = recorded.get(node.name, {})
            waiting[node] = record.get("started_at") or time.time()
            if record.get("pid") == pid and record.get("boot_to_ready_s"):
                booted[node] = record["boot_to_ready_s"]
        for node in plan["start"]:
            waiting[node] = _start_node(node, img, plan["fresh"].get(node), log)
        qemu.prune_pins()  # images no overlay uses any more (after fresh overlays)
        _wait_all(waiting, booted, log)
        _mention_extra_nodes(wanted, log)
        if plan["start"] and master.running():
            log("master: runs; `python -m lab master` accepts the started nodes' minion keys")
        data = state.load()
        return data


def _warn_old_image(node: Node, img: Path, log: Log) -> None:
    stamp = qemu.read_stamp(node) or {}
    if stamp.get("key") and stamp["key"] != img.name:
        log(f"{node.name}: runs the older image {stamp['key']} (current {img.name}); "
            "`python -m lab down` then `up` moves it to the current image")


def _warn_lost_links(reuse: dict[Node, int], log: Log) -> None:
    """A switch that died took the running nodes' cables with it: say so before restarting it."""
    for sw in switch.ALL:
        if not reuse or switch.running(sw, log):
            continue
        plugged = [node.name for node, pid in reuse.items() if sw is not switch.SERVICE or qemu.has_service_links(pid)]
        if plugged:
            log(f"{sw.title}: was not running, so the running nodes ({', '.join(plugged)}) lost their "
                f"{sw.links}; `python -m lab restart NODE` reconnects one")


def _warn_no_service_links(node: Node, pid: int, log: Log) -> None:
    if not qemu.has_service_links(pid):
        log(f"{node.name}: runs without service links (started by an older lab); "
            f"`python -m lab restart {node.name}` adds them")


def _mention_extra_nodes(wanted: Sequence[Node], log: Log) -> None:
    extra = [node.name for node in nodes.running() if node not in wanted]
    if extra:
        log(f"also running: {', '.join(extra)} (left alone; `python -m lab down` stops every node)")


# --- restart -------------------------------------------------------------------------


def stop(name: str, hard: bool = False, log: Log = print) -> dict:
    """Stop one node (graceful unless hard: a pulled plug); its overlay and disks stay for `up`."""
    node = config.node_by_name(name)
    with state.locked(f"stop {name}"):
        preflight.require_root("stop")
        stopped = nodes.stop(node, hard, log)
        if stopped["stopped"]:
            state.update_node(name, pid=None)
            log(f"{name}: stopped by {stopped['how']} in {stopped['seconds']} s; `up` boots it again, same disks")
        else:
            log(f"{name}: was not running")
        return stopped


def restart(name: str, hard: bool = False, log: Log = print) -> dict:
    """Stop a node (graceful unless hard) and boot it again on the SAME overlay and disks."""
    node = config.node_by_name(name)
    with state.locked(f"restart {name}"):
        preflight.require_root("restart")
        preflight.require_tools(NODE_TOOLS)
        img = nodes.image_dir_of(node)
        if img is None or not node.overlay.exists():
            raise LabError(f"{name} has no overlay (or its image is gone); use `python -m lab up` to create it")
        if not qemu.backing_intact(node):
            raise LabError(f"the base image under {name}'s overlay was rebuilt or removed; "
                           "`python -m lab down` then `up` gives it a fresh overlay")
        stopped = nodes.stop(node, hard, log)
        if stopped["stopped"]:
            log(f"{name}: stopped by {stopped['how']} in {stopped['seconds']} s")
        else:
            log(f"{name}: was not running; starting it")
        preflight.require_free_ports([(node.ssh_port, f"ssh to {name}")])
        for sw in switch.ALL:
            switch.ensure(sw, log)
        started_at = _start_node(node, img, None, log)
        times = nodes.wait_ready(node, started_at)
        state.update_node(name, **times)
        log(f"{name}: ready {times['boot_to_ready_s']} s after start (ssh after {times['ssh_after_s']} s)")
        result = {"stop": stopped, **times}
        if master.running():
            answered = master.wait_minions([name], log)
            result["minion_s"] = round(time.time() - started_at, 1)
            log(f"{name}: minion answers test.ping {result['minion_s']} s after start "
                f"({answered[name]} s after ready)")
        return result


# --- link ----------------------------------------------------------------------------


def link(name: str, nic: int, up: bool, log: Log = print) -> dict:
    """Plug (up) or pull (down) one cable of a running node: its SAN NIC (2) or a
    service link (3, 4), through QEMU's monitor. dom0 sees the carrier change; QEMU
    drops the NIC's frames while it is down. A restart of the node plugs everything in."""
    node = config.node_by_name(name)
    nic_id = qemu.link_id(nic)
    if not nodes.pid(node, cleanup=False):
        raise LabError(f"{name} is not running")
    qemu.set_link(node, nic_id, up)
    record = state.load().get("nodes", {}).get(name, {})
    down = set(record.get("links_down") or [])
    down = down - {nic_id} if up else down | {nic_id}
    state.update_node(name, links_down=sorted(down))
    log(f"{name}: NIC {nic} ({nic_id}, {node.mac(nic)}) link {'up' if up else 'down'}")
    return {"node": name, "nic": nic, "id": nic_id, "up": up, "links_down": sorted(down)}


# --- down ----------------------------------------------------------------------------


def down(hard: bool = False, wipe: bool = False, log: Log = print) -> None:
    """Stop every node we started, the switches and the master; wipe disks if asked."""
    with state.locked("down"):
        preflight.require_root("down")
        running = nodes.running(log)
        if running and not hard:
            log(f"stopping {', '.join(n.name for n in running)} (graceful poweroff, up to "
                f"{config.STOP_TIMEOUT} s; `down --hard` skips it)")
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            outcomes = list(pool.map(lambda node: (node, nodes.stop(node, hard, log)), running))
        for node, outcome in outcomes:
            log(f"{node.name}: stopped by {outcome['how']} in {outcome.get('seconds', 0)} s")
            state.update_node(node.name, pid=None)
        if not running:
            log("nodes: none running")
        for sw in switch.ALL:
            switch.stop(sw, log)
        master.stop(log)
        if wipe:
            _wipe(log)


def _wipe(log: Log) -> None:
    removed = [path for node in nodes.all_nodes() for path in qemu.remove_disks(node)]
    qemu.prune_pins()
    forgotten = [node.name for node in nodes.all_nodes() if master.forget_minion_key(node.name)]
    if forgotten:
        log(f"master: dropped the minion keys of {', '.join(forgotten)} (their overlays are gone)")
    cleared = master.forget_cluster_cache()
    if cleared:
        log(f"master: cleared its cache of the old cluster ({', '.join(cleared)})")
    config.CLUSTER_STATE.unlink(missing_ok=True)
    for sw in switch.ALL:
        shutil.rmtree(sw.sock, ignore_errors=True)
    log(f"wiped {len(removed)} overlay/disk file(s) from {config.RUN_DIR}")


# --- status --------------------------------------------------------------------------

STATUS_PROBE = ("xl list >/dev/null 2>&1 && echo xl=ok || echo xl=fail; "
                "echo minion=$(systemctl is-active salt-minion 2>/dev/null)")


def _node_status(node: Node) -> dict:
    pid = nodes.pid(node, cleanup=False)
    info = {"pid": pid, "alive": bool(pid), "ssh_port": node.ssh_port,
            "ssh": False, "xl": False, "minion_service": None, "minion_answers": None}
    if not pid:
        return info
    try:
        proc = nodes.ssh(node, STATUS_PROBE, timeout=15, check=False, connect_timeout=3)
    except LabError as exc:
        info["error"] = str(exc)
        return info
    if proc.returncode == 0:
        fields = dict(line.split("=", 1) for line in proc.stdout.split() if "=" in line)
        info.update(ssh=True, xl=fields.get("xl") == "ok", minion_service=fields.get("minion") or None)
    return info


def _known_nodes() -> list[Node]:
    recorded = set(state.load().get("nodes", {}))
    return [node for node in nodes.all_nodes()
            if node.name in recorded or node.pidfile.exists() or node.overlay.exists()]


def _switch_status(sw: switch.Switch) -> dict:
    pid = switch.running(sw, cleanup=False)
    return {"pid": pid, "alive": bool(pid), "sock": str(sw.sock), "hub": sw.hub}


def status() -> dict:
    """Cheap, read-only checks with short timeouts."""
    known = _known_nodes()
    with ThreadPoolExecutor(max_workers=max(1, len(known))) as pool:
        node_info = dict(zip((n.name for n in known), pool.map(_node_status, known)))
    master_pid = master.running(cleanup=False)
    if master_pid:
        alive = [name for name, info in node_info.items() if info["alive"]]
        try:
            for name, ok in master.ping(alive, timeout=5).items():
                node_info[name]["minion_answers"] = ok
        except LabError:
            pass
    recorded = state.load()
    for name, info in node_info.items():
        if info["alive"]:
            info["links_down"] = recorded.get("nodes", {}).get(name, {}).get("links_down") or []
    return {
        "image_key": recorded.get("image_key"),
        "nodes": node_info,
        **{sw.state_key: _switch_status(sw) for sw in switch.ALL},
        "master": {"pid": master_pid, "alive": bool(master_pid),
                   "publish_port": config.MASTER_PUBLISH_PORT, "ret_port": config.MASTER_RET_PORT},
    }
