"""python -m lab: the xencluster lab, a real Xen cluster inside QEMU.

Expected failures end with one line `lab: error: …` (exit 1), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from lab import cluster, config, master, nodes, preflight, ssh, switch, wait
from lab.errors import LabError


def _print(message: str) -> None:
    print(message, flush=True)


def cmd_build(args: argparse.Namespace) -> int:
    preflight.require_root("build")
    path = nodes.image_module().build(force=args.force, log=_print)
    _print(f"image: {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    data = cluster.up(args.count, build=args.build, log=_print)
    recorded = data.get("nodes", {})
    ready = [f"{node.name} {recorded.get(node.name, {}).get('boot_to_ready_s')} s" for node in config.nodes(args.count)]
    _print(f"up: {len(ready)} node(s) ready on image {data.get('image_key')}: {', '.join(ready)} "
           f"(recorded in {config.CLUSTER_STATE})")
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    if args.stop:
        master.stop_command(log=_print)
    else:
        master.ensure(log=_print)
    return 0


def _exec_salt_tool(name: str):
    def run(args: argparse.Namespace) -> int:
        argv = master.salt_argv(name, args.rest)
        os.execv(argv[0], argv)  # hand the terminal, signals and exit code to salt itself

    return run


def cmd_ssh(args: argparse.Namespace) -> int:
    node = config.node_by_name(args.node)
    command = " ".join(args.command) if args.command else None  # like ssh: a shell line
    argv = ssh.argv(node, nodes.key(node), command, tty=command is None and sys.stdin.isatty())
    os.execvp(argv[0], argv)


def cmd_status(args: argparse.Namespace) -> int:
    data = cluster.status()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    _print(f"image: {data['image_key'] or '(no cluster recorded)'}")
    if not data["nodes"]:
        _print("nodes: none")
    for name, info in data["nodes"].items():
        if not info["alive"]:
            _print(f"{name}: stopped")
            continue
        minion = {True: "answers", False: "silent", None: info["minion_service"] or "?"}[info["minion_answers"]]
        down = f"  links down: {', '.join(info['links_down'])}" if info.get("links_down") else ""
        _print(f"{name}: pid {info['pid']}  ssh :{info['ssh_port']} {'ok' if info['ssh'] else 'no'}  "
               f"xl {'ok' if info['xl'] else 'no'}  minion {minion}{down}")
    for sw in switch.ALL:
        info = data[sw.state_key]
        running = f"pid {info['pid']}{' (hub)' if sw.hub else ''}" if info["alive"] else "stopped"
        _print(f"{sw.title}: {running}")
    master_info = data["master"]
    _print(f"master: {'pid ' + str(master_info['pid']) if master_info['alive'] else 'stopped'} "
           f"(127.0.0.1:{master_info['publish_port']}/{master_info['ret_port']})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    cluster.stop(args.node, hard=args.hard, log=_print)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    cluster.restart(args.node, hard=args.hard, log=_print)
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    cluster.link(args.node, args.nic, args.state == "up", log=_print)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster.down(hard=args.hard, wipe=args.wipe, log=_print)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.what == "master":
        sources = [config.MASTER_LOG]
    elif args.what:
        sources = [config.node_by_name(args.what).console_log]
    else:
        sources = [node.console_log for node in nodes.all_nodes() if node.console_log.exists()]
        if not sources:
            raise LabError(f"no node console logs under {config.RUN_DIR}")
    for path in sources:
        if not path.exists():
            raise LabError(f"no log at {path}")
        if len(sources) > 1:
            _print(f"==> {path} <==")
        for line in wait.tail(path, args.lines):
            print(line)
    return 0


def node_count(text: str) -> int:
    try:
        count = int(text)
        config.nodes(count)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "between" in str(exc) else f"not a number: {text!r}")
    return count


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lab", description="The xencluster lab: a real Xen cluster inside QEMU.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build (or reuse) the dom0 image")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached image is current")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("up", help="boot N nodes (default 2) and wait until ready; resumes")
    p.add_argument("count", nargs="?", type=node_count, default=config.DEFAULT_NODES)
    p.add_argument("--build", action="store_true", help="build the image first if it is missing")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("master", help="salt-master on 127.0.0.1 with every running node's key accepted")
    p.add_argument("--stop", action="store_true", help="stop the master")
    p.set_defaults(func=cmd_master)

    for name in ("salt", "salt-run", "salt-key"):
        p = sub.add_parser(name, help=f"the venv's {name} against the lab master", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_exec_salt_tool(name))

    p = sub.add_parser("ssh", help="ssh to a node (interactive without CMD)")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("status", help="nodes, switches, master (cheap checks)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="stop one node, disks kept (--hard: as if its power were pulled)")
    p.add_argument("node")
    p.add_argument("--hard", action="store_true", help="quit QEMU through its monitor instead of poweroff")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("restart", help="graceful stop and boot of one node, same disks")
    p.add_argument("node")
    p.add_argument("--hard", action="store_true", help="quit QEMU through its monitor instead of poweroff")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("link", help="pull (down) or plug (up) a node's SAN NIC (2) or service link (3, 4)")
    p.add_argument("node")
    p.add_argument("nic", type=int, metavar="NIC", help="2 = SAN, 3 and 4 = service links (eth1, eth2, eth3)")
    p.add_argument("state", choices=("up", "down"))
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("down", help="stop nodes, switches and master")
    p.add_argument("--hard", action="store_true", help="quit QEMU through its monitor (2 s) instead of poweroff")
    p.add_argument("--wipe", action="store_true", help="also delete overlays and data disks")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("logs", help="tail of node console log(s) or the master log")
    p.add_argument("what", nargs="?", metavar="NODE|master")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.set_defaults(func=cmd_logs)
    return top


PASSTHROUGH = ("salt", "salt-run", "salt-key")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    # argparse's REMAINDER does not capture leading options (`salt-key -L`), so the
    # salt tools and ssh's command get every remaining argument untouched.
    if argv and argv[0] in PASSTHROUGH:
        return argparse.Namespace(func=_exec_salt_tool(argv[0]), rest=list(argv[1:]))
    if len(argv) >= 2 and argv[0] == "ssh" and not argv[1].startswith("-"):
        return argparse.Namespace(func=cmd_ssh, node=argv[1], command=list(argv[2:]))
    return parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.func(args)
    except LabError as exc:
        if exc.details:
            print(exc.details, file=sys.stderr)
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a bad node name from config.node_by_name
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: error: interrupted (started nodes keep running; `python -m lab up` resumes)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
