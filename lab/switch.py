"""The nodes' private L2 segments: one vde_switch each, reached over unix sockets.

Two segments, each its own process with its own control dir and pidfile under RUN_DIR:

- SAN: each node's SAN NIC (nic 2, eth1), a plain learning switch (untagged traffic);
- service: each node's two service links (nics 3 and 4, eth2 and eth3), which the
  product bonds and carries guests' VLANs over. It runs as a hub (``--hub``).

Why a hub for the service segment: vde_switch in switch mode only forwards an
802.1Q-tagged frame that arrives on a port which is a tagged member of that VLAN
(``vlan/create`` + ``vlan/addport`` on its management console), and drops it
otherwise; by default every port is an untagged member of VLAN 0 only. The ports
are numbered as QEMU connects, so configuring them would mean tracking port
numbers across node restarts. In hub mode vde_switch skips the VLAN and MAC
logic altogether and copies every frame, untouched, to every other port: tags
pass, the guests' VLAN separation is done by the nodes' bridges (as on a real
trunk), and a bond's failover needs no MAC relearning. For a handful of nodes the
flooding costs nothing. (A node sees its own frames on its other service link;
an active-backup bond ignores what arrives on its inactive slave.)

Nothing here touches a host interface.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab import config
from lab.errors import LabError
from lab.procs import Log, live_pid, terminate
from lab.qemu import run_checked
from lab.wait import until


@dataclass(frozen=True)
class Switch:
    """One segment. Its paths are read from lab.config when used (tests repoint them)."""

    key: str  # state/status key prefix and config name: "san" -> SAN_SWITCH_SOCK
    title: str  # for messages: "SAN switch"
    links: str  # what a node plugs into it: "SAN link"
    hub: bool  # flood every frame untouched (VLAN tags pass)

    @property
    def sock(self) -> Path:
        """The control dir vde_switch creates; QEMU's -netdev vde,sock= points here."""
        return getattr(config, f"{self.key.upper()}_SWITCH_SOCK")

    @property
    def pidfile(self) -> Path:
        return getattr(config, f"{self.key.upper()}_SWITCH_PIDFILE")

    @property
    def ctl(self) -> Path:
        """The socket vde_switch listens on, inside its dir."""
        return self.sock / "ctl"

    @property
    def state_key(self) -> str:
        return f"{self.key}_switch"


SAN = Switch("san", "SAN switch", "SAN link", hub=False)
SERVICE = Switch("service", "service switch", "service links", hub=True)
ALL = (SAN, SERVICE)


def markers(switch: Switch) -> list[str]:
    return ["vde_switch", str(switch.sock)]


def running(switch: Switch, log: Log | None = None, cleanup: bool = True) -> int | None:
    return live_pid(switch.pidfile, markers(switch), switch.title, log, cleanup)


def argv(switch: Switch) -> list[str]:
    return [
        "vde_switch",
        "--sock", str(switch.sock),
        *(["--hub"] if switch.hub else []),
        # Not /etc/vde2/vde_switch.rc or ~/.vderc: nothing on the host changes the lab's segments.
        "--rcfile", "/dev/null",
        "--daemon",
        "--pidfile", str(switch.pidfile),
    ]


def ensure(switch: Switch, log: Log) -> int:
    """Start the switch unless ours already runs; return its PID."""
    pid = running(switch, log)
    if pid:
        return pid
    # A dead switch leaves its socket dir behind; vde_switch refuses to reuse it.
    shutil.rmtree(switch.sock, ignore_errors=True)
    run_checked(argv(switch), f"starting the {switch.title}", timeout=30)
    # cleanup=False: while the switch starts, an empty or not-yet-valid pidfile is
    # not stale, and removing it would lose the only record of the new process.
    try:
        until(
            lambda: (bool(running(switch, cleanup=False)) and switch.ctl.exists(),
                     f"{switch.ctl} or its pidfile not there yet"),
            what=f"the {switch.title} socket {switch.ctl}",
            timeout=15,
            interval=0.2,
        )
    except LabError:
        stop(switch, log)  # leave nothing half-started
        raise
    pid = running(switch)
    if pid is None:
        raise LabError(f"the {switch.title} exited right after it started")
    log(f"{switch.title}: started (pid {pid}, {switch.sock}{', hub' if switch.hub else ''})")
    return pid


def stop(switch: Switch, log: Log) -> None:
    pid = running(switch, log)
    if pid is None:
        return
    if not terminate(pid, markers(switch)):
        raise LabError(f"the {switch.title} (pid {pid}) did not exit after SIGTERM and SIGKILL")
    switch.pidfile.unlink(missing_ok=True)
    shutil.rmtree(switch.sock, ignore_errors=True)
    log(f"{switch.title}: stopped (pid {pid})")
