"""One lab node as a QEMU process: its disks, its command line, start and monitor.

Xen boots as a multiboot kernel under TCG (KVM hangs on these hosts); dom0's kernel
and initrd are multiboot modules. Each node gets a qcow2 overlay on the shared
read-only base.raw, two sparse data disks, a slirp management NIC (ssh and the
master's ports forwarded on loopback only), a NIC on the vde SAN switch and two
service links on the vde service hub (lab/switch.py). The SAN and service NICs have
QEMU ids, so a test can pull their cable: set_link().
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from lab import config
from lab.config import Node
from lab.errors import LabError
from lab.preflight import parse_size, require_tools
from lab.procs import cmdline, is_ours, read_pid

QEMU = "qemu-system-x86_64"
# QEMU device id of each NIC `set_link` may take down, by NIC number (Node.mac(nic)).
# The management NIC (1) has none: the lab reaches its nodes through it.
LINK_IDS = {2: "san0", 3: "svc1", 4: "svc2"}
IMAGE_FILES = ("base.raw", "xen.bin", "vmlinuz", "initrd.img", "id_ed25519")
DATA_DISKS = (1, 2)


def markers(node: Node) -> list[str]:
    """What only our QEMU for this node has on its command line."""
    return [QEMU, f"process=xencluster-{node.name}", str(node.pidfile)]


def xen_cmdline() -> str:
    mem = config.DOM0_MEM
    # bootscrub=0: otherwise Xen scrubs all RAM at boot and each QEMU's RSS grows to -m.
    return (
        f"console=com1 com1=115200,8n1 dom0_mem={mem},max:{mem} dom0_max_vcpus=1 "
        "loglvl=warning bootscrub=0"
    )


def dom0_cmdline(node: Node) -> str:
    # The image takes its identity from systemd.hostname; NICs are matched on MAC.
    # xclab.role=dom0: lab guests boot the same rootfs (xclab.role=guest); units and
    # networkd files that only belong in a dom0 match on it.
    return (f"root=/dev/vda ro console=hvc0 systemd.hostname={node.name} net.ifnames=0 panic=-1 "
            "xclab.role=dom0")


def mgmt_netdev(node: Node) -> str:
    def master_forward(guest_port: int, host_port: int) -> str:
        return (
            f"guestfwd=tcp:{config.GUEST_MASTER_ADDR}:{guest_port}"
            f"-cmd:socat - TCP:127.0.0.1:{host_port}"
        )

    # The image's minion config says 4505/4506. But a minion subscribes to the publish port
    # the master advertises when it authenticates: the host's, when a lab runs its master on
    # other ports (a second lab beside the first), so that port is forwarded too.
    forwards = [master_forward(4505, config.MASTER_PUBLISH_PORT), master_forward(4506, config.MASTER_RET_PORT)]
    if config.MASTER_PUBLISH_PORT not in (4505, 4506):
        forwards.append(master_forward(config.MASTER_PUBLISH_PORT, config.MASTER_PUBLISH_PORT))
    # restrict=on: the node reaches nothing but these forwards; ssh binds loopback only.
    return ",".join(["user,id=mgmt,restrict=on", f"hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22", *forwards])


def _disk(path: Path, fmt: str, drive_id: str, serial: str) -> list[str]:
    return [
        "-drive", f"file={path},if=none,id={drive_id},format={fmt},cache=unsafe,discard=unmap",
        "-device", f"virtio-blk-pci,drive={drive_id},serial={serial}",
    ]


def node_argv(node: Node, img: Path) -> list[str]:
    n = node.number
    argv = [
        QEMU,
        "-name", f"{node.name},process=xencluster-{node.name}",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-accel", "tcg,thread=multi", "-cpu", "qemu64,+npt",
        "-smp", "1", "-m", str(config.NODE_RAM_MB),
        "-kernel", str(img / "xen.bin"),
        "-append", xen_cmdline(),
        "-initrd", f"{img / 'vmlinuz'} {dom0_cmdline(node)},{img / 'initrd.img'}",
        "-chardev",
        f"socket,id=ser0,path={node.console_socket},server=on,wait=off,logfile={node.console_log}",
        "-serial", "chardev:ser0",
        "-monitor", f"unix:{node.monitor},server=on,wait=off",
    ]
    argv += _disk(node.overlay, "qcow2", "root", f"n{n}root")
    for k in DATA_DISKS:
        argv += _disk(node.data_disk(k), "raw", f"data{k}", f"n{n}data{k}")
    # After the data disks, so they stay vdb/vdc. The lab guest minion's root disk:
    # dom0 sees it as /dev/disk/by-id/virtio-n<N>groot.
    argv += _disk(node.guest_root, "qcow2", "groot", f"n{n}groot")
    # NIC order is PCI slot order, so dom0 (net.ifnames=0) names them eth0..eth3.
    argv += [
        "-netdev", mgmt_netdev(node),
        "-device", f"virtio-net-pci,netdev=mgmt,mac={node.mac(1)}",
        "-netdev", f"vde,id=san,sock={config.SAN_SWITCH_SOCK}",
        "-device", f"virtio-net-pci,netdev=san,mac={node.mac(2)},id={LINK_IDS[2]}",
    ]
    for nic in config.SERVICE_NICS:
        # Distinct netdev and device ids: set_link acts on every net client of that name.
        link = LINK_IDS[nic]
        argv += [
            "-netdev", f"vde,id={link}net,sock={config.SERVICE_SWITCH_SOCK}",
            "-device", f"virtio-net-pci,netdev={link}net,mac={node.mac(nic)},id={link}",
        ]
    argv += ["-pidfile", str(node.pidfile), "-daemonize"]
    return argv


# --- disks -------------------------------------------------------------------------


def image_identity(img: Path) -> dict:
    """The image an overlay depends on: its key, and base.raw itself (a --force rebuild
    keeps the key but replaces base.raw, which would corrupt an old overlay)."""
    base = (img / "base.raw").stat()
    return {"key": img.name, "base": f"{base.st_size}:{base.st_mtime_ns}:{base.st_ino}"}


PIN_FILES = (*IMAGE_FILES, "id_ed25519.pub", "manifest.json")


def pins_dir() -> Path:
    return config.RUN_DIR / "img"


def pin_image(img: Path) -> Path:
    """Hard-link the image's files under RUN_DIR so the nodes keep what they booted.

    The image cache may be rebuilt or pruned while nodes run (a forced rebuild
    replaces the directory). Overlays back onto the pinned base.raw and nodes use
    the pinned kernel and ssh key, so restarts keep working. Hard links cost no
    space; if LAB_DIR spans filesystems, the cache itself is used (unpinned).
    """
    pin = pins_dir() / f"{img.name}-{(img / 'base.raw').stat().st_ino}"
    if (pin / ".complete").exists():
        return pin
    tmp = pin.with_name(pin.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in PIN_FILES:
        source = img / name
        if not source.exists():
            continue
        try:
            os.link(source, tmp / name)
        except OSError:
            if name == "base.raw":
                shutil.rmtree(tmp, ignore_errors=True)
                return img
            shutil.copy2(source, tmp / name)
    (tmp / ".complete").touch()
    os.replace(tmp, pin)
    return pin


def prune_pins() -> list[Path]:
    """Remove pinned images no overlay refers to any more."""
    if not pins_dir().is_dir():
        return []
    used = {str(Path(stamp["dir"])) for node in _every_node() if (stamp := read_stamp(node)) and "dir" in stamp}
    removed = []
    for pin in pins_dir().iterdir():
        if str(pin) not in used:
            shutil.rmtree(pin, ignore_errors=True)
            removed.append(pin)
    return removed


def _every_node() -> list[Node]:
    return [Node(n) for n in range(1, config.MAX_NODES + 1)]


def read_stamp(node: Node) -> dict | None:
    try:
        return json.loads(node.image_stamp.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stale_disks_reason(node: Node, img: Path) -> str | None:
    """Why the node's existing overlay cannot be reused with this image (None: reusable)."""
    if not node.overlay.exists():
        return None
    stamp = read_stamp(node)
    if stamp is None:
        return "its overlay has no image record"
    current = image_identity(img)
    if stamp.get("key") != current["key"]:
        return f"its overlay was built on image {stamp.get('key')}, the current image is {current['key']}"
    if stamp.get("base") != current["base"]:
        return f"image {current['key']} was rebuilt since its overlay was made"
    return None


def backing_intact(node: Node) -> bool:
    """The base.raw the overlay was made on is still the file at the stamped place."""
    stamp = read_stamp(node) or {}
    try:
        return image_identity(Path(stamp["dir"]))["base"] == stamp.get("base")
    except (KeyError, FileNotFoundError):
        return False


def disk_files(node: Node) -> list[Path]:
    return [node.overlay, node.guest_root, *(node.data_disk(k) for k in DATA_DISKS), node.image_stamp]


def remove_disks(node: Node) -> list[Path]:
    removed = []
    for path in disk_files(node):
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def prepare_disks(node: Node, img: Path) -> list[str]:
    """Create whatever is missing: overlay (+ its stamp) and sparse data disks.

    Each file is built under a temporary name and renamed, so an interrupted run
    never leaves a half-made disk that a later run would trust.
    """
    made = []
    if not node.overlay.exists():
        pinned = pin_image(img)
        # The guest root shares the image: a new dom0 overlay gets a fresh one too.
        _make_overlay(node, pinned, node.guest_root, "guest root")
        _make_overlay(node, pinned, node.overlay, "overlay")
        # "dir" is what the node boots from (kernel, initrd) and its ssh key.
        _write_json(node.image_stamp, {**image_identity(img), "dir": str(pinned)})
        made.append("overlay")
    elif not node.guest_root.exists():
        _make_overlay(node, Path(read_stamp(node)["dir"]), node.guest_root, "guest root")
        made.append("guest root")
    size = parse_size(config.DATA_DISK_SIZE)
    for k in DATA_DISKS:
        path = node.data_disk(k)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as handle:
                handle.truncate(size)  # sparse: takes no space until written
            os.replace(tmp, path)
            made.append(f"data{k}")
    return made


def _make_overlay(node: Node, pinned: Path, path: Path, what: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run_checked(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(pinned / "base.raw"), str(tmp)],
        f"{node.name}: creating its {what}",
    )
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_checked(argv: list[str], doing: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{doing}: {argv[0]} did not finish within {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        require_tools([argv[0]])  # names the Debian package
        raise LabError(f"{doing}: {exc}") from exc
    if proc.returncode != 0:
        raise LabError(f"{doing}: {argv[0]} failed (exit {proc.returncode}): {first_error(proc.stderr)}")
    return proc


def first_error(stderr: str) -> str:
    """The first meaningful stderr line (QEMU also prints harmless missing-GUI-module notes)."""
    for line in stderr.splitlines():
        line = line.strip()
        if line and "module ui-" not in line and "qemu-system-gui" not in line:
            return line
    return "(no error output)"


# --- process -----------------------------------------------------------------------


def rotate_console_log(node: Node) -> None:
    """Keep the previous boot's console as .1, so each boot's log starts clean."""
    if node.console_log.exists() and node.console_log.stat().st_size:
        os.replace(node.console_log, node.console_log.with_name(node.console_log.name + ".1"))


def start(node: Node, img: Path) -> int:
    """Start the node's QEMU (daemonized) and return its PID."""
    rotate_console_log(node)
    for stale in (node.console_socket, node.monitor, node.pidfile):
        stale.unlink(missing_ok=True)
    run_checked(node_argv(node, img), f"{node.name}: starting QEMU", timeout=60)
    pid = read_pid(node.pidfile)
    if pid is None or not is_ours(pid, markers(node)):
        raise LabError(f"{node.name}: QEMU daemonized but no running process behind {node.pidfile}")
    return pid


def monitor(node: Node, command: str, timeout: float = 5.0) -> str:
    """Send one human-monitor command over the node's unix socket; return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(node.monitor))
        _read_until_prompt(conn, timeout)
        conn.sendall(command.encode() + b"\n")
        return _read_until_prompt(conn, timeout)


def _read_until_prompt(conn: socket.socket, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"(qemu) " not in data and time.monotonic() < deadline:
        try:
            chunk = conn.recv(4096)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:  # QEMU closed the monitor, e.g. after `quit`
            break
        data += chunk
    return data.decode(errors="replace")


def has_service_links(pid: int) -> bool:
    """The running QEMU has the service NICs (a node started by an older lab has not)."""
    parts = {part for arg in cmdline(pid) or [] if arg.startswith("virtio-net-pci,") for part in arg.split(",")}
    return all(f"id={LINK_IDS[nic]}" in parts for nic in config.SERVICE_NICS)


def link_id(nic: int) -> str:
    """The QEMU device id of NIC number ``nic`` (2 = SAN, 3 and 4 = service links)."""
    try:
        return LINK_IDS[nic]
    except KeyError:
        raise LabError(f"NIC {nic} cannot be taken down: choose one of "
                       f"{', '.join(str(n) for n in LINK_IDS)} (1 is the management link the lab uses)") from None


def set_link(node: Node, nic_id: str, up: bool) -> None:
    """Pull or plug a NIC's cable (HMP ``set_link``): the guest sees its carrier go, and
    QEMU drops every frame to and from that NIC until the link is up again."""
    command = f"set_link {nic_id} {'on' if up else 'off'}"
    try:
        reply = monitor(node, command)
    except OSError as exc:
        raise LabError(f"{node.name}: cannot reach its QEMU monitor {node.monitor}: {exc}") from exc
    if "(qemu) " not in reply:
        raise LabError(f"{node.name}: no answer from its QEMU monitor to `{command}`")
    error = monitor_error(reply)
    if error:
        hint = ""
        if "not found" in error:
            hint = (f" (a node started before the lab had this link; "
                    f"`python -m lab restart {node.name}` adds it)")
        raise LabError(f"{node.name}: `{command}` failed: {error}{hint}")


def monitor_error(reply: str) -> str | None:
    """The error line in an HMP reply, if any (a successful set_link prints nothing)."""
    for line in reply.splitlines():
        for marker in ("Error:", "unknown command"):
            at = line.find(marker)
            if at >= 0:  # after any readline echo or escape codes on that line
                return line[at:].replace("(qemu) ", "").strip()
    return None


def quit_via_monitor(node: Node) -> bool:
    """Ask QEMU to exit at once (no guest shutdown). False if the monitor is unreachable."""
    try:
        monitor(node, "quit")
    except OSError:
        return False
    return True
