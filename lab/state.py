"""RUN_DIR/cluster.json (what runs, on which image, how fast it booted) and the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from typing import Iterator

from lab import config
from lab.errors import LabError

_lock_depth = threading.local()
_update_lock = threading.Lock()  # nodes become ready in parallel threads: serialise the read-modify-write


def load() -> dict:
    try:
        data = json.loads(config.CLUSTER_STATE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save(data: dict) -> None:
    config.RUN_DIR.mkdir(parents=True, exist_ok=True)
    data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = config.CLUSTER_STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config.CLUSTER_STATE)


def update_node(name: str, **fields) -> dict:
    """Merge fields into one node's record and save at once (so a crash keeps it)."""
    with _update_lock:
        data = load()
        data.setdefault("nodes", {}).setdefault(name, {}).update(fields)
        save(data)
        return data


def forget_node(name: str) -> None:
    with _update_lock:
        data = load()
        if data.get("nodes", {}).pop(name, None) is not None:
            save(data)


@contextlib.contextmanager
def locked(action: str) -> Iterator[None]:
    """One lab command changing RUN_DIR at a time (re-entrant within this process)."""
    depth = getattr(_lock_depth, "value", 0)
    if depth:
        _lock_depth.value = depth + 1
        try:
            yield
        finally:
            _lock_depth.value -= 1
        return
    config.RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(config.LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LabError(
                f"another `python -m lab` command is changing the lab right now ({config.LOCK_FILE}); "
                f"wait for it, then retry `{action}`"
            ) from exc
        _lock_depth.value = 1
        try:
            yield
        finally:
            _lock_depth.value = 0
            fcntl.flock(handle, fcntl.LOCK_UN)
