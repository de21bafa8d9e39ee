"""Lab guests: the probe guest (busybox + mdadm) and a guest minion (the image itself).

The guest minion boots the lab image's own rootfs, through a per-node overlay
that dom0 sees as /dev/disk/by-id/virtio-n<N>groot, with the dom0's kernel and
initramfs (xclab.role=guest on its command line keeps dom0-only units off).
Before it boots, dom0 writes its identity into that disk: minion id, a key pair
the master already accepts, the master address (the dom0 relay on the
xcguests bridge) and a static address. No console scraping, no key races.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lab import master, qemu
from lab.config import Node
from lab.errors import LabError

GUEST_BRIDGE = "xcguests"
RELAY_ADDR = "10.99.0.1"  # dom0 end of the bridge: lab-master-relay@4505/4506
GUEST_NET = "10.99.0"
PROBE_RAMDISK = "/srv/domu/probe-initrd.gz"
MOUNT_POINT = "/run/xclab-groot"


@dataclass(frozen=True)
class GuestMinion:
    """A guest minion's identity; ``index`` (2..254) picks its MAC and address."""

    name: str
    index: int

    def __post_init__(self):
        if not 2 <= self.index <= 254:
            raise ValueError(f"guest index must be 2..254, got {self.index}")

    @property
    def mac(self) -> str:
        return f"00:16:3e:99:00:{self.index:02x}"

    @property
    def address(self) -> str:
        return f"{GUEST_NET}.{self.index}"


def root_disk(node: Node) -> str:
    return f"/dev/disk/by-id/virtio-n{node.number}groot"


def kernel_abi(node: Node) -> str:
    """The kernel ABI of the image this node booted (its pinned manifest)."""
    stamp = qemu.read_stamp(node)
    if not stamp or "dir" not in stamp:
        raise LabError(f"{node.name} has no image record; is it up?")
    manifest = json.loads((Path(stamp["dir"]) / "manifest.json").read_text())
    return manifest["resolved"]["kernel_abi"]


def seed_files(guest: GuestMinion, private_pem: str, public_pem: str) -> dict[str, tuple[str, int]]:
    """Path in the guest root -> (content, mode)."""
    return {
        "etc/salt/minion_id": (guest.name + "\n", 0o644),
        "etc/salt/minion.d/lab.conf": (
            "# Lab guest minion: the master is reached through its dom0's relay.\n"
            f"master: {RELAY_ADDR}\nacceptance_wait_time: 5\nacceptance_wait_time_max: 10\n"
            "random_reauth_delay: 0\n", 0o644),
        "etc/salt/pki/minion/minion.pem": (private_pem, 0o400),
        "etc/salt/pki/minion/minion.pub": (public_pem, 0o644),
        "etc/systemd/network/05-lab-guest.network": (
            f"[Match]\nMACAddress={guest.mac}\n\n[Network]\nAddress={guest.address}/24\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n", 0o644),
    }


def tar_base64(files: dict[str, tuple[str, int]]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode) in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def seed_script(disk: str) -> str:
    """dom0 side: mount the guest root, unpack the seed (stdin), drop the old master key."""
    return (
        "set -eu\n"
        f"mkdir -p {MOUNT_POINT}\n"
        f"mount {disk} {MOUNT_POINT}\n"
        f"trap 'umount {MOUNT_POINT}' EXIT\n"
        f"rm -f {MOUNT_POINT}/etc/salt/pki/minion/minion_master.pub\n"
        f"base64 -d | tar -x --no-same-owner -C {MOUNT_POINT}\n"
        f"chown -R 0:0 {MOUNT_POINT}/etc/salt/pki\n"
    )


def seed_minion(node: Node, key: Path, guest: GuestMinion) -> str:
    """Give the guest root on ``node`` its identity; pre-accept its key on the master.

    The guest must not be running (its root would be mounted twice).
    """
    import salt.crypt  # the host venv's salt: same key format as the master

    private_pem, public_pem = salt.crypt.gen_keys(2048)
    payload = tar_base64(seed_files(guest, private_pem, public_pem))
    from lab import ssh

    ssh.run(node, key, ["sh", "-c", seed_script(root_disk(node))], input=payload, timeout=120)
    return master.install_minion_key(guest.name, public_pem)


def minion_config(node: Node, guest: GuestMinion, legs: list[str], memory_mib: int = 384) -> dict:
    """The xl config (a dict for xencluster_xl.create) of the guest minion on ``node``."""
    abi = kernel_abi(node)
    disks = [f"phy:{root_disk(node)},xvda,w"]
    disks += [f"phy:{leg},xvd{chr(ord('b') + i)},w" for i, leg in enumerate(legs)]
    return {
        "name": guest.name,
        "type": "pvh",
        "kernel": f"/boot/vmlinuz-{abi}",
        "ramdisk": f"/boot/initrd.img-{abi}",
        "extra": (f"root=/dev/xvda rw console=hvc0 systemd.hostname={guest.name} "
                  "net.ifnames=0 xclab.role=guest"),
        "memory": memory_mib,
        "vcpus": 1,
        "disk": disks,
        "vif": [f"mac={guest.mac},bridge={GUEST_BRIDGE}"],
        "on_crash": "preserve",
    }


MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def probe_network(vif: tuple[str, str] | None, ip: str | None, peer: str | None) -> tuple[list[str], list[str]]:
    """The probe guest's NIC: (kernel command line words, xl vif list).

    ``vif`` = (bridge, mac): one netfront NIC (eth0) on that dom0 bridge, e.g. a
    service VLAN's bridge. ``ip`` = "A.B.C.D/NN" puts that address on eth0;
    ``peer`` = "A.B.C.D" makes every heartbeat ping it (`` net=ok``/`` net=fail``).
    """
    if vif is None:
        if ip or peer:
            raise ValueError("probe.ip/probe.peer need a vif (bridge, mac) to put eth0 on")
        return [], []
    bridge, mac = vif
    if not bridge or any(ch in bridge for ch in ", =\t\n"):
        raise ValueError(f"not a bridge name: {bridge!r}")
    if not MAC_RE.match(mac.lower()) or int(mac[:2], 16) & 1:
        raise ValueError(f"not a unicast MAC address: {mac!r}")
    words = []
    if ip is not None:
        if "/" not in ip:
            raise ValueError(f"probe ip needs a prefix length, e.g. 10.20.0.2/24: {ip!r}")
        interface = ipaddress.IPv4Interface(ip)  # ValueError on anything else
        words.append(f"probe.ip={interface.with_prefixlen}")
    if peer is not None:
        if ip is None:
            raise ValueError("probe.peer needs probe.ip: the guest cannot ping without an address")
        words.append(f"probe.peer={ipaddress.IPv4Address(peer)}")
    return words, [f"mac={mac.lower()},bridge={bridge}"]


def probe_config(name: str, legs: list[str], node: Node, memory_mib: int = 128, *,
                 vif: tuple[str, str] | None = None, ip: str | None = None,
                 peer: str | None = None) -> dict:
    """The probe guest: RAID1 over its two legs, a heartbeat every 2 s (lab/domu.py).

    With ``vif`` (bridge, mac) it gets one NIC; with ``ip``/``peer`` its init brings
    it up and reports the peer's reachability in each heartbeat (probe_network).
    """
    if len(legs) != 2:
        raise ValueError("the probe guest mirrors exactly two legs")
    net_words, vifs = probe_network(vif, ip, peer)
    xl = {
        "name": name,
        "type": "pvh",
        "kernel": f"/boot/vmlinuz-{kernel_abi(node)}",
        "ramdisk": PROBE_RAMDISK,
        "extra": " ".join(["console=hvc0 loglevel=4", *net_words]),
        "memory": memory_mib,
        "maxmem": memory_mib,
        "vcpus": 1,
        "maxvcpus": 2,
        "disk": [f"phy:{legs[0]},xvda,w", f"phy:{legs[1]},xvdb,w"],
        "on_crash": "preserve",
    }
    if vifs:
        xl["vif"] = vifs
    return xl
