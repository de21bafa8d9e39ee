"""The host salt-master on 127.0.0.1 serving this checkout, and the lab's minion keys.

Keys are accepted WITHOUT auto_accept: each node's minion.pub is read over ssh (a
channel we trust: our key, our loopback forward) and installed as nodeN's accepted
key, replacing a stale key from an earlier overlay.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import yaml

from lab import config, nodes, preflight, procs, state, wait
from lab.config import Node
from lab.errors import LabError
from lab.procs import Log

SALT_BIN = Path(sys.executable).parent  # the venv's salt tools sit next to its python
CONFIG_FILE = config.MASTER_ETC / "master"
PKI_DIR = config.MASTER_ROOT / "pki"
SOCK_DIR = config.MASTER_ROOT / "sock"
MINION_PUB = "/etc/salt/pki/minion/minion.pub"
MINION_MASTER_PUB = "/etc/salt/pki/minion/minion_master.pub"
EXT_TREES = ("_modules", "_states", "_runners")
# If a minion has not answered this long after its key was accepted, restart it once.
MINION_KICK_AFTER = 90


def tool(name: str) -> Path:
    path = SALT_BIN / name
    if not path.is_file():
        raise LabError(f"{name} not found next to {sys.executable}; run the lab with the project venv: .venv/bin/python -m lab")
    return path


def markers() -> list[str]:
    return ["salt-master", str(config.MASTER_ETC)]


def settings() -> dict:
    return {
        "interface": "127.0.0.1",
        "publish_port": config.MASTER_PUBLISH_PORT,
        "ret_port": config.MASTER_RET_PORT,
        "root_dir": str(config.MASTER_ROOT),
        "pki_dir": str(PKI_DIR),
        "cachedir": str(config.MASTER_ROOT / "cache"),
        "sock_dir": str(SOCK_DIR),
        "user": "root",
        "pidfile": str(config.MASTER_PIDFILE),
        "log_file": str(config.MASTER_LOG),
        "key_logfile": str(config.MASTER_ROOT / "key.log"),
        "log_level_logfile": "info",
        "auto_accept": False,
        # A minion's publish.runner (xencluster_guest.running's live check) holds one worker
        # until the runner returns, and the runner's own publish needs another: with both dom0s
        # checking at once in a highstate, 2 workers deadlock until the 60 s request timeout.
        "worker_threads": 6,
        "timeout": 30,
        "file_roots": {"base": [str(config.REPO / "salt"), str(config.MASTER_EXT)]},
        "pillar_roots": {"base": [str(config.PILLAR_ROOT)]},
        # xencluster_guest.running asks the master, at that moment, where a guest runs
        # (publish.runner xencluster.locate); only the dom0 minions may call that runner.
        "peer_run": {r"node[0-9]+$": [r"xencluster\.locate$"]},
        # The shipped alert reactor (salt/reactor/xencluster_alert.sls): xencluster.monitor's
        # alerts land in this master's log. No monitor schedule: it would add commands to every
        # lab measurement; the lab test runs xencluster.monitor itself.
        # and the shipped provisioning reactor: `salt-call event.send xencluster/guest/provision`
        # on a dom0 provisions a pillar guest (salt/xencluster/files/master.d/xencluster-provision.conf).
        "reactor": [{"xencluster/alert/*": ["salt://reactor/xencluster_alert.sls"]},
                    {"xencluster/guest/provision": ["salt://reactor/xencluster_provision.sls"]}],
        "xencluster_provision_allow": ["node[0-9]*"],
    }


def config_text() -> str:
    header = "# Written by `python -m lab master`; rewritten on every run.\n"
    return header + yaml.safe_dump(settings(), default_flow_style=False, sort_keys=True)


def write_config() -> bool:
    """Write the config and the extension symlinks; True if the config file changed."""
    for directory in (config.MASTER_ETC, config.MASTER_ROOT, config.MASTER_EXT):
        directory.mkdir(parents=True, exist_ok=True)
    for tree in EXT_TREES:
        link, target = config.MASTER_EXT / tree, config.REPO / tree
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    text = config_text()
    if CONFIG_FILE.exists() and CONFIG_FILE.read_text() == text:
        return False
    CONFIG_FILE.write_text(text)
    return True


def running(log: Log | None = None, cleanup: bool = True) -> int | None:
    return procs.live_pid(config.MASTER_PIDFILE, markers(), "salt-master", log, cleanup)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(log: Log) -> int:
    ports = [
        (config.MASTER_PUBLISH_PORT, "salt-master publish_port"),
        (config.MASTER_RET_PORT, "salt-master ret_port"),
    ]
    preflight.require_free_ports(ports)
    preflight.require_short_socket_paths([SOCK_DIR / "master_event_pull.ipc"])
    begun = time.monotonic()
    proc = subprocess.run(
        [str(tool("salt-master")), "-c", str(config.MASTER_ETC), "-d"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise LabError(f"salt-master failed to start (exit {proc.returncode}): {last}")

    def probe() -> tuple[bool, str]:
        pid = running(cleanup=False)
        if not pid:
            return False, "no salt-master process behind the pidfile yet"
        missing = [str(port) for port, _ in ports if not _accepting(port)]
        return (not missing, f"pid {pid}, not yet listening on {', '.join(missing)}")

    try:
        wait.until(
            probe,
            what=f"the salt-master to listen on 127.0.0.1:{config.MASTER_PUBLISH_PORT}/{config.MASTER_RET_PORT}",
            timeout=config.MASTER_START_TIMEOUT,
            interval=0.5,
            details=lambda: _log_details(),
        )
    except LabError:
        stop(log)  # leave nothing half-started
        raise
    pid = running()
    log(f"master: started (pid {pid}) in {time.monotonic() - begun:.1f} s, log {config.MASTER_LOG}")
    return pid


def _log_details() -> str:
    last = wait.tail(config.MASTER_LOG, 15)
    return "\n".join([f"--- last lines of {config.MASTER_LOG} ---", *last, "---"]) if last else ""


def stop(log: Log) -> bool:
    pid = running(log)
    if pid is None:
        return False
    workers = procs.children(pid)  # salt's worker processes, which the main one reaps on SIGTERM
    if not procs.terminate(pid, markers(), timeout=30):
        raise LabError(f"salt-master pid {pid} did not exit after SIGTERM and SIGKILL")
    for worker in workers:
        procs.terminate(worker, markers(), timeout=10)
    config.MASTER_PIDFILE.unlink(missing_ok=True)
    log(f"master: stopped (pid {pid})")
    return True


# --- minion keys -------------------------------------------------------------------


def install_minion_key(name: str, pub: str, pki: Path | None = None) -> str:
    """Install pub as the accepted key of minion `name`; say what changed."""
    pki = pki or PKI_DIR
    if "-----BEGIN PUBLIC KEY-----" not in pub:
        raise LabError(f"{name}: {MINION_PUB} does not look like a public key")
    for pending in ("minions_pre", "minions_rejected", "minions_denied"):
        (pki / pending / name).unlink(missing_ok=True)
    accepted = pki / "minions" / name
    accepted.parent.mkdir(parents=True, exist_ok=True)
    if accepted.exists():
        if accepted.read_text().strip() == pub.strip():
            return "already accepted"
        outcome = "replaced a stale key (earlier overlay)"
    else:
        outcome = "accepted"
    tmp = accepted.with_name(f".{name}.tmp")
    tmp.write_text(pub)
    tmp.chmod(0o644)
    os.replace(tmp, accepted)
    return outcome


KEY_SEPARATOR = "--- minion_master.pub ---"
STATE_SEPARATOR = "--- salt-minion ---"
# One ssh round trip per node (each costs seconds under TCG): the minion's key, the
# master key it has cached (if any) and whether the minion still runs.
READ_KEYS = (f"cat {MINION_PUB} && echo '{KEY_SEPARATOR}' && {{ cat {MINION_MASTER_PUB} 2>/dev/null; "
             f"echo '{STATE_SEPARATOR}'; systemctl is-active salt-minion; }}; true")


def split_keys(output: str) -> tuple[str, str, str]:
    """(minion.pub, cached master key or '', salt-minion state) from READ_KEYS' output."""
    minion_pub, _, rest = output.partition(KEY_SEPARATOR + "\n")
    cached_master, _, service = rest.partition(STATE_SEPARATOR + "\n")
    return minion_pub, cached_master.strip(), service.strip()


def forget_minion_key(name: str, pki: Path | None = None) -> bool:
    """Drop every key the master holds for a minion (its node got a fresh overlay, so
    a new minion key). Else the master would reject the new key and the minion exit."""
    pki = pki or PKI_DIR
    found = False
    for kind in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
        path = pki / kind / name
        if path.exists():
            path.unlink()
            found = True
    return found


def forget_cluster_cache(cachedir: Path | None = None) -> list[str]:
    """Drop what the master's cache knows of the cluster (xencluster's banks: drained marks,
    last-seen record, operation journal and locks; the job cache): a wiped lab is a new
    cluster, and a node2 left drained by an earlier run would refuse every migration to it."""
    cachedir = cachedir or config.MASTER_ROOT / "cache"
    removed = []
    for path in sorted(cachedir.glob("xencluster*")) + [cachedir / "jobs"]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


def accept_node(node: Node, log: Log) -> None:
    seen: dict[str, str] = {}

    def probe() -> tuple[bool, str]:
        proc = nodes.ssh(node, READ_KEYS, timeout=30, check=False)
        if KEY_SEPARATOR in proc.stdout:
            seen["output"] = proc.stdout
            return True, "read"
        return False, (proc.stderr.strip().splitlines() or [f"no {MINION_PUB} yet"])[-1]

    wait.until(
        probe,
        what=f"{node.name}'s minion key {MINION_PUB}",
        timeout=config.MINION_TIMEOUT,
        details=lambda: wait.console_details(node.console_log),
    )
    minion_pub, cached_master, service = split_keys(seen["output"])
    log(f"master: {node.name} key {install_minion_key(node.name, minion_pub)}")
    ours = (PKI_DIR / "master.pub").read_text().strip()
    if cached_master and cached_master != ours:
        # The node trusted another master (MASTER_DIR was recreated) and would refuse ours.
        nodes.ssh(node, f"rm -f {MINION_MASTER_PUB} && systemctl restart salt-minion", timeout=120)
        log(f"master: {node.name} had cached another master's key; cleared it and restarted its minion")
    elif service not in ("active", "activating"):
        # A minion the master once rejected (stale key) exits for good.
        nodes.ssh(node, "systemctl reset-failed salt-minion; systemctl restart salt-minion", timeout=120)
        log(f"master: {node.name}'s salt-minion was {service or 'not running'}; restarted it")


def accept_all(running_nodes: Sequence[Node], log: Log) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(running_nodes))) as pool:
        for future in [pool.submit(accept_node, node, log) for node in running_nodes]:
            future.result()


# --- talking to minions ------------------------------------------------------------


def salt_argv(tool_name: str, argv: Sequence[str]) -> list[str]:
    return [str(tool(tool_name)), "-c", str(config.MASTER_ETC), *argv]


def run_tool(tool_name: str, argv: Sequence[str], timeout: float, check: bool) -> subprocess.CompletedProcess:
    full = salt_argv(tool_name, argv)
    try:
        proc = subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{tool_name} {' '.join(argv)}` took longer than {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
        raise LabError(f"`{tool_name} {' '.join(argv)}` failed (exit {proc.returncode}) {last}".rstrip())
    return proc


def salt(argv: Sequence[str], timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """The venv's `salt` against the lab master, e.g. salt(['*', 'test.ping', '--out=json'])."""
    return run_tool("salt", argv, timeout, check)


def salt_run(argv: Sequence[str], timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    return run_tool("salt-run", argv, timeout, check)


def salt_key(argv: Sequence[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    return run_tool("salt-key", argv, timeout, check)


def local_call(target: str, argv: Sequence[str], timeout: float) -> dict | None:
    """What `salt TARGET ARGV --out=json --timeout=TIMEOUT` returns, through Salt's LocalClient in
    this process: {minion: return}; a minion that did not return is absent.

    The same publish and the same argument parsing as the CLI (parse_input, then the minion's own
    parsing of k=v), without its ~0.8 s of start-up per call. Returns None for what it does not
    take (any option but -L, a compound call): the caller runs the CLI then.
    """
    tgt_type, rest = "glob", []
    for arg in argv:
        if arg == "-L":
            tgt_type = "list"
        elif arg.startswith("-") and not arg.lstrip("-")[:1].isdigit():
            return None
        else:
            rest.append(arg)
    if not rest or "," in rest[0]:
        return None
    import salt.client  # pylint: disable=import-outside-toplevel  (heavy: only for callers of this)
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.utils.args  # pylint: disable=import-outside-toplevel

    opts = salt.config.client_config(str(CONFIG_FILE))
    with salt.client.LocalClient(mopts=opts) as client:
        try:
            return client.cmd(target, rest[0], salt.utils.args.parse_input(rest[1:]), timeout=timeout,
                              tgt_type=tgt_type)
        except Exception as exc:  # pylint: disable=broad-except  (SaltClientError and kin: say which call)
            raise LabError(f"salt {target} {' '.join(argv)}: {exc}") from exc


def json_documents(text: str | None) -> list:
    """Every JSON document in ``text``, in order: `salt --out=json` prints one per minion,
    `salt-run --out=json` one per progress event and then the return. A non-JSON text raises
    json.JSONDecodeError."""
    decoder, docs, pos, text = json.JSONDecoder(), [], 0, text or ""
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def minion_returns(stdout: str) -> dict:
    """Every minion's return from `salt … --out=json` (without --static), merged.

    Never --static: in Salt 3008 it runs the job as a batch, which first makes a test.ping
    round (1.4 s per call in the lab, hundreds of calls per test run).
    """
    merged = {}
    for doc in json_documents(stdout):
        if isinstance(doc, dict):
            merged.update(doc)
    return merged


def ping(names: Sequence[str], timeout: int = 10) -> dict[str, bool]:
    """Which of these minions answer test.ping right now."""
    if not names:
        return {}
    proc = salt(["-L", ",".join(names), "test.ping", "--out=json", f"--timeout={timeout}"],
                timeout=timeout + 60)
    try:
        answers = minion_returns(proc.stdout or "")
    except json.JSONDecodeError:
        answers = {}
    return {name: answers.get(name) is True for name in names}


def wait_minions(names: Sequence[str], log: Log, timeout: float | None = None) -> dict[str, float]:
    """Wait until every named minion answers test.ping; seconds until each first did."""
    begun = time.monotonic()
    answered: dict[str, float] = {}
    kicked: set[str] = set()

    def probe() -> tuple[bool, str]:
        waiting = [name for name in names if name not in answered]
        for name, ok in ping(waiting).items():
            if ok:
                answered[name] = round(time.monotonic() - begun, 1)
        waiting = [name for name in names if name not in answered]
        if waiting and time.monotonic() - begun > MINION_KICK_AFTER:
            _kick(waiting, kicked, log)
        return not waiting, f"no answer from {', '.join(waiting)}"

    wait.until(
        probe,
        what=f"test.ping answers from {', '.join(names)}",
        timeout=timeout or config.MINION_TIMEOUT,
        interval=2.0,
        details=lambda: _log_details(),
    )
    return answered


def _kick(waiting: Sequence[str], kicked: set[str], log: Log) -> None:
    """Restart a silent minion once (it may have given up on a master that was down)."""
    for name in waiting:
        if name in kicked:
            continue
        kicked.add(name)
        log(f"master: {name} has not answered after {MINION_KICK_AFTER} s; restarting its salt-minion once")
        nodes.ssh(config.node_by_name(name), ["systemctl", "restart", "salt-minion"], timeout=120, check=False)


# --- the command -------------------------------------------------------------------


def ensure(log: Log = print) -> dict:
    """Master running, every running node's key accepted, every minion answering."""
    with state.locked("master"):
        preflight.require_root("master")
        tool("salt-master")
        changed = write_config()
        begun = time.monotonic()
        pid = running(log)
        if pid and changed:
            log("master: its config changed; restarting it")
            stop(log)
            pid = None
        if pid:
            log(f"master: already running (pid {pid})")
        else:
            pid = start(log)
        running_nodes = nodes.running(log)
        if not running_nodes:
            log("master: no lab node is running, so no keys to accept (`python -m lab up` first)")
        accept_all(running_nodes, log)
        names = [node.name for node in running_nodes]
        answered = wait_minions(names, log) if names else {}
        ready = round(time.monotonic() - begun, 1)
        for name in names:
            log(f"master: {name} answers test.ping ({answered[name]} s)")
        log(f"master: ready in {ready} s")
        state_data = state.load()
        state_data["master"] = {"pid": pid, "ready_s": ready, "minions": answered,
                                "publish_port": config.MASTER_PUBLISH_PORT, "ret_port": config.MASTER_RET_PORT}
        state.save(state_data)
        return state_data["master"]


def stop_command(log: Log = print) -> None:
    with state.locked("master --stop"):
        preflight.require_root("master --stop")
        if not stop(log):
            log("master: not running")
