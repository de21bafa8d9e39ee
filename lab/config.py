"""Shared facts of the lab: where it lives, how nodes are numbered and addressed.

Everything the lab creates lives under one directory outside the checkout
(``XENCLUSTER_LAB``, default ``/var/tmp/xencluster-lab``):

    cache/images/<key>/    built dom0 image (base.raw, xen.bin, vmlinuz, initrd.img,
                           ssh key pair, manifest.json); <key> hashes every build input
    cache/wheels/<key>/    salt wheels for the dom0 image, keyed on the constraints file
    cache/debs/            downloaded .deb files (apt's own cache for the chroot)
    run/                   running cluster: overlays, data disks, pidfiles, sockets, logs
    master/                the host salt-master: config, root_dir, pidfile, log
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB_DIR = Path(os.environ.get("XENCLUSTER_LAB", "/var/tmp/xencluster-lab"))
# The image, wheel and deb cache; another lab (tests/lab_cluster/lanes.py runs two at once)
# can share one lab's cache instead of building its own.
CACHE_DIR = Path(os.environ.get("XENCLUSTER_LAB_CACHE", str(LAB_DIR / "cache")))
IMAGES_DIR = CACHE_DIR / "images"
WHEELS_DIR = CACHE_DIR / "wheels"
RUN_DIR = LAB_DIR / "run"
MASTER_DIR = LAB_DIR / "master"
CONSTRAINTS = REPO / "constraints.txt"

MAX_NODES = 8
DEFAULT_NODES = 2

# Host ports, all bound on 127.0.0.1 only.
SSH_PORT_BASE = int(os.environ.get("XENCLUSTER_LAB_SSH_BASE", "2220"))  # node N -> base+N
MASTER_PUBLISH_PORT = int(os.environ.get("XENCLUSTER_LAB_PUBLISH_PORT", "4505"))
MASTER_RET_PORT = int(os.environ.get("XENCLUSTER_LAB_RET_PORT", "4506"))
# The master's pillar root: this checkout's pillar/ (the lab model, pillar/xencluster/lab.sls),
# or another directory with its own top.sls (benchmarks render generated cluster models there).
PILLAR_ROOT = Path(os.environ.get("XENCLUSTER_LAB_PILLAR_ROOT", str(REPO / "pillar")))

# Inside each node (fixed in the image, so one image serves every node).
GUEST_MASTER_ADDR = "10.0.2.100"  # slirp guestfwd -> host 127.0.0.1:MASTER_*_PORT
MGMT_ADDR = "10.0.2.15"
SAN_NET = "192.168.100"  # node N has SAN_NET.N/24 on its private SAN link
IQN_PREFIX = "iqn.2025-01.lab.xen"  # rtslib needs a dot after the date part

# QEMU sizing, per node.
NODE_RAM_MB = int(os.environ.get("XENCLUSTER_LAB_RAM_MB", "2048"))
DOM0_MEM = os.environ.get("XENCLUSTER_LAB_DOM0_MEM", "768M")
DATA_DISK_SIZE = os.environ.get("XENCLUSTER_LAB_DATA_DISK", "4G")
ROOT_IMAGE_SIZE = "4G"

NODE_NAME_RE = re.compile(r"^node([1-9])$")


@dataclass(frozen=True)
class Node:
    """One lab node; everything about it derives from its number."""

    number: int

    @property
    def name(self) -> str:
        return f"node{self.number}"

    @property
    def ssh_port(self) -> int:
        return SSH_PORT_BASE + self.number

    @property
    def san_addr(self) -> str:
        return f"{SAN_NET}.{self.number}"

    @property
    def initiator_iqn(self) -> str:
        return f"{IQN_PREFIX}:{self.name}"

    def mac(self, nic: int) -> str:
        """nic 1 = management, 2 = SAN, 3 and 4 = service links (SERVICE_NICS)."""
        return f"52:54:00:00:{self.number:02x}:{nic:02x}"

    @property
    def pidfile(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def monitor(self) -> Path:
        return RUN_DIR / f"{self.name}.mon"

    @property
    def console_log(self) -> Path:
        return RUN_DIR / f"{self.name}.console.log"

    @property
    def overlay(self) -> Path:
        return RUN_DIR / f"{self.name}.qcow2"

    @property
    def guest_root(self) -> Path:
        """Root disk of the lab's guest minion on this node (an overlay of the image)."""
        return RUN_DIR / f"{self.name}-groot.qcow2"

    def data_disk(self, k: int) -> Path:
        return RUN_DIR / f"{self.name}-data{k}.raw"

    # Added for the lab runtime (lab/qemu.py, lab/cluster.py).
    @property
    def console_socket(self) -> Path:
        return RUN_DIR / f"{self.name}.con"

    @property
    def image_stamp(self) -> Path:
        """Which image the overlay was built on (JSON: key, base.raw identity, and the
        pinned image dir under RUN_DIR the node boots from)."""
        return RUN_DIR / f"{self.name}.image.json"


def node_by_name(name: str) -> Node:
    match = NODE_NAME_RE.match(name)
    if not match:
        raise ValueError(f"not a lab node name: {name!r} (expected node1..node{MAX_NODES})")
    return Node(int(match.group(1)))


def nodes(count: int) -> list[Node]:
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"node count must be between 1 and {MAX_NODES}, got {count}")
    return [Node(n) for n in range(1, count + 1)]


# --- Lab runtime (lab/cluster.py, lab/master.py): added, nothing above changed. ---


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


SAN_SWITCH_SOCK = RUN_DIR / "san.vde"  # vde_switch control dir: the nodes' private SAN segment
SAN_SWITCH_PIDFILE = RUN_DIR / "san.pid"
# The service segment: each node's two service links (bonded by the product,
# VLAN-tagged guest traffic). A vde hub, so 802.1Q frames pass untouched (lab/switch.py).
SERVICE_SWITCH_SOCK = RUN_DIR / "svc.vde"
SERVICE_SWITCH_PIDFILE = RUN_DIR / "svc.pid"
SERVICE_NICS = (3, 4)  # eth2 and eth3 in dom0; left unconfigured by the image
CLUSTER_STATE = RUN_DIR / "cluster.json"
LOCK_FILE = RUN_DIR / "lab.lock"

MASTER_ETC = MASTER_DIR / "etc"  # salt -c MASTER_ETC
MASTER_ROOT = MASTER_DIR / "r"  # short: salt's AF_UNIX sockets live below it (108 bytes)
MASTER_EXT = MASTER_DIR / "ext"  # _modules/_states/_runners symlinks to the checkout
MASTER_PIDFILE = MASTER_ROOT / "master.pid"  # under root_dir: salt prefixes root_dir to any other path
MASTER_LOG = MASTER_ROOT / "master.log"

# Bounded waits, in seconds. Every wait polls real readiness; these only cap it.
BOOT_TIMEOUT = _env_int("XENCLUSTER_LAB_BOOT_TIMEOUT", 900)
STOP_TIMEOUT = _env_int("XENCLUSTER_LAB_STOP_TIMEOUT", 150)  # graceful poweroff: 45-70 s seen
MINION_TIMEOUT = _env_int("XENCLUSTER_LAB_MINION_TIMEOUT", 300)
MASTER_START_TIMEOUT = _env_int("XENCLUSTER_LAB_MASTER_TIMEOUT", 90)

# Disk a new node may fill under LAB_DIR: overlay growth plus what tests write to
# the (sparse) data disks. Checked before anything starts.
NODE_DISK_RESERVE_MB = _env_int("XENCLUSTER_LAB_NODE_DISK_MB", 3072)
