"""
Provisioning of a xencluster guest on the dom0 that will first run it: its disks' RAID1
arrays, their filesystems, the OS on the root disk, and the guest's identity.

Called by the ``xencluster.provision`` runner (``salt-run xencluster.provision <guest>``),
which first creates, exports and imports the guest's legs on both nodes, and afterwards
tags the legs, starts the guest and waits for its minion. Here, on one dom0:

1. query: the guest's model (pillar), this dom0's domains, each leg's md superblock and the
   arrays already assembled here (a run interrupted midway leaves them);
2. plan (``plan``, also the dry run): per disk, create or assemble its RAID1 (metadata 1.2,
   internal write-intent bitmap) over its two legs at their stable paths, and make its
   filesystem if it has none; on the root disk (the first), install the OS unless an earlier
   run finished that; write the identity files;
3. apply (``install``): the same, then unmount and stop every array again.

Every array and filesystem gets a UUID derived from (cluster, guest, disk), so a re-run
recognises its own work (an array of ours is assembled, never re-created) and the guest's
fstab and mdadm.conf are known before anything runs. A leg that carries any other md
superblock or a foreign filesystem is refused: provisioning never overwrites data. What a
newly created array finds in its data area (``md --create`` does not zero it: the freed
extents of an earlier LV, e.g. a deprovisioned guest's filesystem with our very UUID) is
not data of this guest: it is wiped before the mkfs, never adopted.

The dom0 assembles guest arrays here and only here (the dom0 formula keeps md from
assembling them automatically), over loop devices on the legs (md claims its members
exclusively, and LIO holds the local leg it exports); it stops them and detaches the loops
before the guest may start. Files are
written into the guest root without following symbolic links, so a planted link cannot
make the dom0 write outside it.

The OS comes from a golden image (a tar archive of a root filesystem on this dom0) or from
``debootstrap``, as the guest's pillar ``provision`` says. The guest boots with the kernel
and ramdisk of its pillar; the ramdisk must assemble the root array from its first two
disks (``/dev/xvda``, ``/dev/xvdb``; the lab's is ``/srv/xencluster/images/guest-initrd.gz``).

The minion key pair is made by the runner on the master (which accepts the public key)
and handed over sealed to this dom0's own minion key (RSA-OAEP + AES-GCM): only this
dom0 can read the private key, and the master's job cache holds only ciphertext.
"""

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_provision"

MDADM = "mdadm"
TOOLS = ("mdadm", "blkid", "wipefs", "mount", "umount", "tar", "losetup")
MOUNT_BASE = "/run/xencluster-provision"
OS_MARKER = "etc/xencluster-provisioned"  # in the guest root, written when the OS is complete
PROVISIONED_TAG = "xencluster.provisioned"  # LV tag the runner puts on both legs at the end
UUID_NAMESPACE = uuid.UUID("5b0f6a52-3c1e-4a57-9d0e-7f1c2a9e4b61")  # fixed: UUIDs must not change
ROOT_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")
MKFS = {"ext2": "mkfs.ext2", "ext3": "mkfs.ext3", "ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "swap": "mkswap"}
TAR_COMPRESSION = {".tar": [], ".tar.gz": ["--gzip"], ".tgz": ["--gzip"], ".tar.xz": ["--xz"],
                   ".tar.zst": ["--zstd"]}  # fmt: skip
INSTALL_TIMEOUT = 3600  # seconds for the OS install (tar or debootstrap)
MKFS_TIMEOUT = 1800
DEVICE_WAIT = 10  # seconds an assembled array's device node may take to appear
MINION_KEY_FIELDS = ("pub", "sealed_key", "nonce", "ciphertext")


def __virtual__():
    missing = [tool for tool in TOOLS if not salt.utils.path.which(tool)]
    if missing:
        return (False, f"xencluster_provision: {', '.join(missing)} not installed")
    return __virtualname__


# --- names and identities (pure) ------------------------------------------------------------------


def array_uuid(cluster, guest, disk):
    """The md array UUID of a guest disk: the same on every run, every node, every cluster rebuild."""
    return uuid.uuid5(UUID_NAMESPACE, f"md/{cluster}/{guest}/{disk}")


def fs_uuid(cluster, guest, disk):
    """The filesystem (or swap) UUID of a guest disk."""
    return uuid.uuid5(UUID_NAMESPACE, f"fs/{cluster}/{guest}/{disk}")


def mdadm_uuid(value):
    """``uuid.UUID`` -> mdadm's notation ``xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx``."""
    text = value.hex
    return ":".join(text[i:i + 8] for i in range(0, 32, 8))


def md_device(guest, disk):
    """The dom0 path of a guest disk's array while provisioning: short, unique per guest disk."""
    digest = hashlib.sha256(f"{guest}/{disk}".encode()).hexdigest()[:12]
    return f"/dev/md/xcp-{digest}"


def mount_point(guest):
    return f"{MOUNT_BASE}/{guest}"


def _mount_dir(disk):
    """Where a non-root disk's filesystem is mounted in the guest."""
    return f"/srv/{disk['name']}"


def _fstab_line(cluster, guest, disk, root):
    fs = disk["filesystem"]
    ident = f"UUID={fs_uuid(cluster, guest, disk['name'])}"
    if fs == "swap":
        return f"{ident} none swap sw,nofail 0 0"
    if fs not in ROOT_FILESYSTEMS:
        return None
    if root:  # xfs has no boot-time fsck (fsck.xfs is a no-op): pass 0
        return f"{ident} / {fs} errors=remount-ro 0 1" if fs != "xfs" else f"{ident} / xfs defaults 0 0"
    return f"{ident} {_mount_dir(disk)} {fs} defaults,nofail 0 2"


def fstab(cluster, guest, disks):
    lines = ["# Written by xencluster provisioning: the guest's RAID1 arrays, by filesystem UUID."]
    for index, disk in enumerate(disks):
        line = _fstab_line(cluster, guest, disk, index == 0)
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"


def mdadm_conf(cluster, guest, disks):
    lines = [
        "# Written by xencluster provisioning: each disk is a RAID1 of its two legs (one per node).",
        "HOMEHOST <ignore>", "MAILADDR root", "AUTO +1.x -all",
    ]  # fmt: skip
    for disk in disks:
        lines.append(f"ARRAY /dev/md/{disk['name']} metadata=1.2 UUID={mdadm_uuid(array_uuid(cluster, guest, disk['name']))}")
    return "\n".join(lines) + "\n"


def network_unit(spec, interface):
    """systemd-networkd config of the guest's first NIC (matched on its MAC)."""
    prov = spec["provision"]
    lines = ["# Written by xencluster provisioning.", "[Match]", f"MACAddress={interface['mac']}", "", "[Network]"]
    if prov["address"]:
        lines.append(f"Address={prov['address']}")
        if prov["gateway"]:
            lines.append(f"Gateway={prov['gateway']}")
    else:
        lines.append("DHCP=yes")
    lines += [f"DNS={server}" for server in prov["dns"]]
    # a static guest needs no autoconfiguration, unless its gateway is link-local (fe80::/10)
    if prov["address"] and not (prov["gateway"] or "").lower().startswith("fe8"):
        lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
    return "\n".join(lines) + "\n"


def identity_files(cluster, guest, spec):
    """Guest-root path -> (content, mode): what makes the image this guest (no key material)."""
    prov = spec["provision"]
    files = {
        "etc/hostname": (f"{guest}\n", 0o644),
        "etc/hosts": (f"127.0.0.1 localhost\n127.0.1.1 {guest}\n::1 localhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/fstab": (fstab(cluster, guest, spec["disks"]), 0o644),
        "etc/mdadm/mdadm.conf": (mdadm_conf(cluster, guest, spec["disks"]), 0o644),
        "etc/salt/minion_id": (f"{guest}\n", 0o644),
        "etc/salt/minion.d/xencluster.conf": (
            f"# Written by xencluster provisioning.\nid: {guest}\nmaster: {prov['master']}\n", 0o644),
        # salt/top.sls gives a minion with this grain the guest baseline (xencluster.guest)
        "etc/salt/grains": (json.dumps({"xencluster": {"role": "guest", "cluster": cluster,
                                                       "nodes": list(spec["nodes"])}}) + "\n", 0o644),
    }
    if spec["interfaces"]:
        files["etc/systemd/network/10-xencluster-eth0.network"] = (network_unit(spec, spec["interfaces"][0]), 0o644)
    if prov["dns"]:
        files["etc/resolv.conf"] = ("".join(f"nameserver {s}\n" for s in prov["dns"]), 0o644)
    return files


# --- the plan (pure) ------------------------------------------------------------------------------


def _leg_state(leg, superblock, expected):
    """'blank', 'ours' or 'foreign' for one leg's md superblock (``xencluster_md.examine``)."""
    if superblock is None:
        return "blank"
    return "ours" if superblock.get("MD_UUID") == expected else "foreign"


def _disk_plan(cluster, guest, disk, facts):
    expected = mdadm_uuid(array_uuid(cluster, guest, disk["name"]))
    md = md_device(guest, disk["name"])
    legs = [leg["path"] for leg in disk["legs"]]
    missing = [p for p in legs if not facts["present"].get(p)]
    states = {p: _leg_state(p, facts["superblocks"].get(p), expected) for p in legs if p not in missing}
    entry = {"disk": disk["name"], "md": md, "uuid": expected, "legs": legs, "filesystem": disk["filesystem"],
             "fs_uuid": str(fs_uuid(cluster, guest, disk["name"])), "legs_state": states, "problems": []}  # fmt: skip
    if missing:
        entry["problems"].append(f"leg(s) not at their stable path on this node: {', '.join(missing)}")
    foreign = [p for p, s in states.items() if s == "foreign"]
    if foreign:
        entry["problems"].append(
            f"{', '.join(foreign)} carries another md array's superblock: refused, provisioning never "
            f"overwrites data (wipe it yourself if it is garbage: mdadm --zero-superblock)")
    filled = {p: facts["contents"].get(p) for p, s in states.items() if s == "blank" and facts["contents"].get(p)}
    if filled:
        entry["problems"].append(
            "refused, provisioning never overwrites data: " + ", ".join(f"{p} holds {t}" for p, t in filled.items()))
    ours = [p for p, s in states.items() if s == "ours"]
    entry["active"] = facts["active"].get(md, False)
    if entry["active"]:
        entry["array"] = "already assembled here (an earlier run was interrupted)"
    elif not ours:
        entry["array"] = "create"
    elif len(ours) == len(legs):
        entry["array"] = "assemble"
    else:
        entry["array"] = "assemble degraded and add the blank leg (full resync)"
    return entry


def build_plan(cluster, guest, spec, node, facts):
    """The provisioning steps on ``node`` as plain data; ``problems`` non-empty means refused."""
    problems = []
    if guest in facts["domains"]:
        problems.append(f"{guest} exists on {node} ({facts['domains'][guest].get('state')}): a running guest "
                        "is never provisioned")
    if not spec.get("provision"):
        problems.append(f"{guest} has no provision settings in pillar (xencluster.guests.{guest}.provision)")
    disks = [_disk_plan(cluster, guest, disk, facts) for disk in spec["disks"]]
    for entry in disks:
        problems += [f"disk {entry['disk']}: {p}" for p in entry.pop("problems")]
    root = disks[0] if disks else None
    prov = spec.get("provision") or {}
    plan = {"guest": guest, "node": node, "disks": disks, "mount": mount_point(guest),
            "os": {"source": prov.get("source"), "image": prov.get("image"),
                   "debootstrap": prov.get("debootstrap"),
                   "install": "unless the root filesystem already holds a complete install "
                              f"(/{OS_MARKER})"},
            "files": sorted(identity_files(cluster, guest, spec)) if prov else [],
            "problems": problems}  # fmt: skip
    if root and root["filesystem"] not in ROOT_FILESYSTEMS:
        problems.append(f"root disk {root['disk']} has filesystem {root['filesystem']}: "
                        f"provisioning needs one of {', '.join(ROOT_FILESYSTEMS)}")
    return plan


# --- running tools --------------------------------------------------------------------------------


def _run(argv, ok=(0,), timeout=None):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True, timeout=timeout)
    if res["retcode"] not in ok:
        raise CommandExecutionError(
            f"{argv[0]} failed (rc {res['retcode']}): {(res.get('stderr') or res.get('stdout') or '').strip()}",
            info={"argv": argv, "stderr": res.get("stderr"), "retcode": res["retcode"]},
        )
    return res


def _model(guest):
    view = __salt__["xencluster_model.node_view"](__opts__["id"])
    spec = view["guests"].get(guest)
    if spec is None:
        raise SaltInvocationError(
            f"the cluster model does not let {view['node']} run {guest}: no guest of that name has its "
            f"disks on {view['node']}")
    return view, spec


def _active_arrays(paths):
    """{md path: assembled here?} (a /dev/md/<name> link exists only while the array runs)."""
    return {path: os.path.exists(path) for path in paths}


def _facts(spec):
    """Everything the plan needs, read once: domains, leg presence, superblocks, assembled arrays."""
    legs = [leg["path"] for disk in spec["disks"] for leg in disk["legs"]]
    present = {path: os.path.exists(path) for path in legs}
    examine = __salt__["xencluster_md.examine"]
    superblocks = {path: examine(path) for path in legs if present[path]}
    # mdadm --create --run would write over a filesystem without asking: look at blank legs.
    contents = {path: _probe(path).get("TYPE") for path in legs if present[path] and superblocks[path] is None}
    mds = [md_device(spec["name"], disk["name"]) for disk in spec["disks"]]
    return {"domains": __salt__["xencluster_xl.list_domains"](), "present": present,
            "superblocks": superblocks, "contents": contents, "active": _active_arrays(mds)}  # fmt: skip


def plan(guest):
    """
    What ``install`` would do for ``guest`` on this dom0, changing nothing (the dry run).

    Returns ``{"guest", "node", "disks": [{"disk", "md", "uuid", "legs", "legs_state",
    "array": create|assemble|..., "filesystem", "fs_uuid"}], "mount", "os", "files",
    "problems"}``; non-empty ``problems`` means ``install`` would refuse.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_provision.plan web2
    """
    _check_guest(guest)
    view, spec = _model(guest)
    return build_plan(view["cluster"]["name"], guest, spec, view["node"], _facts(spec))


def _check_guest(guest):
    if not isinstance(guest, str) or not guest or len(guest) > 31 or not all(
            c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in guest) or guest[0] == "-":
        raise SaltInvocationError(f"invalid guest name: {guest!r}")
    return guest


# --- arrays and filesystems -----------------------------------------------------------------------


def _wait_for(path, seconds=DEVICE_WAIT):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise CommandExecutionError(f"{path} did not appear within {seconds} s")
        time.sleep(0.2)


def _loop_of(path):
    """The loop device already attached to leg ``path`` (an earlier, interrupted run), or None."""
    listed = _run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"])["stdout"].strip()
    wanted = {path, os.path.realpath(path)}
    for dev in (json.loads(listed) if listed else {}).get("loopdevices") or []:
        if (dev.get("back-file") or "").strip() in wanted:
            return dev["name"]
    return None


def _attach(path):
    """A loop device over a leg. md claims its members exclusively and LIO already holds the local
    leg (it exports it to the partner): md over a loop device leaves the LV to LIO."""
    return _loop_of(path) or _run(["losetup", "--find", "--show", "--direct-io=on", "--", path])["stdout"].strip()


def _detach(path):
    loop = _loop_of(path)
    if loop:
        _run(["losetup", "--detach", loop])


def _bring_up(guest, entry):
    """Create or assemble one disk's array (over loop devices on its legs); returns what was done."""
    md = entry["md"]
    if entry["active"]:
        return False, "was assembled"
    loops = {leg: _attach(leg) for leg in entry["legs"]}
    name = f"--name={entry['disk']}"
    if entry["array"] == "create":
        _run([MDADM, "--create", md, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
              "--bitmap=internal", f"--uuid={entry['uuid']}", f"--homehost={guest}", name,
              *[loops[leg] for leg in entry["legs"]]])  # fmt: skip
        done = "created"
    else:
        ours = [loops[p] for p, s in entry["legs_state"].items() if s == "ours"]
        _run([MDADM, "--assemble", md, "--run", f"--uuid={entry['uuid']}", *ours])
        done = "assembled"
        for blank in [p for p, s in entry["legs_state"].items() if s == "blank"]:
            _run([MDADM, "--manage", md, "--add", loops[blank]])
            done += f", added {blank}"
    _wait_for(md)
    return done == "created" or "added" in done, done


def _probe(device):
    res = _run(["blkid", "--probe", "--output", "export", "--", device], ok=(0, 2))
    out = {}
    for line in res["stdout"].splitlines() if res["retcode"] == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _mkfs_argv(fstype, fsid, device):
    if fstype == "xfs":
        return [MKFS[fstype], "-q", "-m", f"uuid={fsid}", device]
    if fstype == "swap":
        return [MKFS[fstype], "-U", fsid, "--", device]
    return [MKFS[fstype], "-q", "-U", fsid, "--", device]


def _make_filesystem(entry, fresh):
    """mkfs on a blank array; an existing filesystem is kept if it is the one we made.

    ``fresh``: this run has just created the array. ``mdadm --create`` does not zero its data
    area, so a filesystem found there is what the legs' extents held before (a deprovisioned
    guest's, with its keys and data): it is wiped, never adopted, even when its UUID is ours.
    """
    fstype = entry["filesystem"]
    if fstype not in MKFS:
        return False, "no filesystem (none in pillar)"
    found, leftover = _probe(entry["md"]), ""
    if fresh and found.get("TYPE"):
        leftover = f" (wiped the {found.get('TYPE')} {found.get('UUID', '')} the new array's extents held)"
        _run(["wipefs", "--all", "--", entry["md"]])
        found = {}
    if not found.get("TYPE"):
        _run(_mkfs_argv(fstype, entry["fs_uuid"], entry["md"]), timeout=MKFS_TIMEOUT)
        return True, f"made {fstype}{leftover}"
    if found.get("TYPE") != fstype or found.get("UUID") != entry["fs_uuid"]:
        raise CommandExecutionError(
            f"{entry['md']} already holds {found.get('TYPE')} {found.get('UUID')}, not the {fstype} "
            f"{entry['fs_uuid']} provisioning makes: refused (its data is kept)")
    return False, f"kept {fstype}"


def _stop(md):
    if os.path.exists(md):
        _run([MDADM, "--stop", md])


# --- the guest root -------------------------------------------------------------------------------


def _open_dir(root_fd, parts):
    """Open the directory ``parts`` below ``root_fd`` (creating it), never following a link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except OSError:
        os.close(fd)
        raise


def _parent(root, relative):
    """(fd of the directory holding ``root/relative``, made if missing, no link followed; the file's name)."""
    parts = relative.split("/")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return _open_dir(root_fd, parts[:-1]), parts[-1]
    finally:
        os.close(root_fd)


def _write_file(root, relative, content, mode):
    """Write ``root/relative`` (no link followed anywhere below root); True if it changed."""
    dir_fd, name = _parent(root, relative)
    try:
        data = content.encode()
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)  # a link or odd file: replaced, never followed
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as fh:
                    if fh.read() == data and stat.S_IMODE(st.st_mode) == mode and st.st_uid == 0:
                        return False
        except FileNotFoundError:
            pass
        tmp = f".{name}.xcprov"
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            os.fchown(fh.fileno(), 0, 0)
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    finally:
        os.close(dir_fd)


def _remove_file(root, relative):
    dir_fd, name = _parent(root, relative)
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(dir_fd)


def _installed(root):
    try:
        st = os.stat(os.path.join(root, OS_MARKER), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def _install_argv(prov, root):
    if prov["source"] == "image":
        image = prov["image"]
        suffix = next((s for s in sorted(TAR_COMPRESSION, key=len, reverse=True) if image.endswith(s)), None)
        if suffix is None:
            raise CommandExecutionError(f"golden image {image}: not a tar archive ({', '.join(TAR_COMPRESSION)})")
        return ["tar", "--extract", f"--file={image}", f"--directory={root}", "--numeric-owner",
                "--preserve-permissions", "--same-owner", *TAR_COMPRESSION[suffix]]  # fmt: skip
    boot = prov["debootstrap"]
    argv = ["debootstrap", f"--variant={boot['variant']}"]
    if boot["include"]:
        argv.append("--include=" + ",".join(boot["include"]))
    return [*argv, boot["suite"], root, boot["mirror"]]


def _install_os(prov, root):
    if _installed(root):
        return False, "already installed"
    if prov["source"] == "image" and not os.path.isfile(prov["image"]):
        raise CommandExecutionError(f"golden image {prov['image']} is not a file on {__opts__['id']}")
    if prov["source"] == "debootstrap" and not salt.utils.path.which("debootstrap"):
        raise CommandExecutionError(f"debootstrap is not installed on {__opts__['id']}")
    started = time.monotonic()
    _run(_install_argv(prov, root), timeout=INSTALL_TIMEOUT)
    marker = {"source": prov["source"], "image": prov["image"], "debootstrap": prov["debootstrap"],
              "installed_at": int(time.time()), "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    _write_file(root, OS_MARKER, json.dumps(marker, sort_keys=True) + "\n", 0o644)
    return True, f"installed from {prov['image'] or prov['debootstrap']['mirror']} in {marker['seconds']} s"


# --- the minion key, sealed to this dom0's minion key ---------------------------------------------


def _unseal(minion_key):
    """The guest's private key PEM from the runner's sealed box (``xencluster.provision``)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(minion_key, dict) or any(not isinstance(minion_key.get(k), str) for k in MINION_KEY_FIELDS):
        raise SaltInvocationError(f"minion_key must be a mapping with {', '.join(MINION_KEY_FIELDS)}")
    with open(os.path.join(__opts__["pki_dir"], "minion.pem"), "rb") as fh:
        own = serialization.load_pem_private_key(fh.read(), password=None)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        key = own.decrypt(base64.b64decode(minion_key["sealed_key"]), oaep)
        pem = AESGCM(key).decrypt(base64.b64decode(minion_key["nonce"]), base64.b64decode(minion_key["ciphertext"]),
                                  minion_key["pub"].encode())
    except Exception as exc:  # pylint: disable=broad-except
        raise CommandExecutionError(f"cannot unseal the guest's minion key with {__opts__['id']}'s key: {exc}")
    return pem.decode()


def _write_identity(root, cluster, guest, spec, minion_key):
    files = dict(identity_files(cluster, guest, spec))
    if minion_key is not None:
        files["etc/salt/pki/minion/minion.pem"] = (_unseal(minion_key), 0o400)
        files["etc/salt/pki/minion/minion.pub"] = (minion_key["pub"], 0o644)
    changed = [path for path, (content, mode) in sorted(files.items()) if _write_file(root, path, content, mode)]
    # The master's key is learnt on first contact; a stale one would make the minion refuse it.
    if minion_key is not None and _remove_file(root, "etc/salt/pki/minion/minion_master.pub"):
        changed.append("etc/salt/pki/minion/minion_master.pub (removed)")
    return bool(changed), changed


# --- install --------------------------------------------------------------------------------------


def _mount(entry, root):
    os.makedirs(root, mode=0o700, exist_ok=True)
    if os.path.ismount(root):
        return False, "was mounted"
    _run(["mount", "-t", entry["filesystem"], "-o", "nodev,nosuid", "--", entry["md"], root])
    return False, "mounted"


def _unmount(root):
    if os.path.ismount(root):
        _run(["umount", "--", root])
    try:
        os.rmdir(root)
    except OSError:
        pass


def _timed(steps, step, fun, *args):
    started = time.monotonic()
    try:
        changed, detail = fun(*args)
    except OSError as exc:  # e.g. a link planted where a directory must be: refused, never followed
        raise CommandExecutionError(f"{step}: {exc}")
    steps.append({"step": step, "changed": changed, "detail": detail,
                  "seconds": round(time.monotonic() - started, 2)})


def _apply(view, guest, spec, plan_, minion_key):
    cluster, steps = view["cluster"]["name"], []
    root_entry, root = plan_["disks"][0], plan_["mount"]
    try:
        for entry in plan_["disks"]:
            _timed(steps, f"array {entry['disk']}", _bring_up, guest, entry)
            fresh = steps[-1]["detail"] == "created"
            _timed(steps, f"filesystem {entry['disk']}", _make_filesystem, entry, fresh)
        _timed(steps, "mount root", _mount, root_entry, root)
        _timed(steps, "install os", _install_os, spec["provision"], root)
        _timed(steps, "identity", _write_identity, root, cluster, guest, spec, minion_key)
    finally:
        # Whatever happened: nothing of the guest stays mounted or assembled in dom0.
        errors = []
        cleanup = [(_unmount, root)] + [(_stop, e["md"]) for e in plan_["disks"]]
        cleanup += [(_detach, leg) for e in plan_["disks"] for leg in e["legs"]]
        for action, arg in cleanup:
            try:
                action(arg)
            except CommandExecutionError as exc:
                errors.append(str(exc))
        if errors:
            log.error("xencluster_provision: %s: cleanup failed: %s", guest, "; ".join(errors))
    steps.append({"step": "stopped arrays", "changed": False, "detail": [e["md"] for e in plan_["disks"]],
                  "seconds": 0})
    return steps


@contextlib.contextmanager
def _install_lock(guest, wait=INSTALL_TIMEOUT):
    """One install of a guest at a time on this dom0: a runner killed and run again re-publishes the
    install while the first one may still run here; the second waits, then finds the work done."""
    os.makedirs(MOUNT_BASE, mode=0o700, exist_ok=True)
    fd = os.open(f"{MOUNT_BASE}/{guest}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CommandExecutionError(f"another install of {guest} still runs on {__opts__['id']}")
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def install(guest, minion_key=None, test=False):
    """
    Build ``guest``'s arrays, filesystems, OS and identity on this dom0, then stop them again.

    Idempotent: an array of ours is assembled (never re-created), a filesystem of ours kept, the
    OS not reinstalled once complete, and identity files rewritten only when they differ. Two
    installs of one guest on a dom0 never overlap (an flock; the second waits). A
    leg with a foreign md superblock, a foreign filesystem, a missing leg or the guest existing
    on this dom0 refuses before anything changes. ``minion_key`` is the sealed key pair the
    ``xencluster.provision`` runner makes (public key accepted on the master); without it the
    guest keeps whatever key its image has. ``test=True`` returns the plan only.

    Returns ``{"guest", "node", "plan", "steps": [{"step", "changed", "detail", "seconds"}], "changed"}``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_provision.install web2 test=True
        salt-run xencluster.provision web2      # the normal way: legs, key, start, minion
    """
    _check_guest(guest)
    view, spec = _model(guest)
    plan_ = build_plan(view["cluster"]["name"], guest, spec, view["node"], _facts(spec))
    if plan_["problems"]:
        raise CommandExecutionError(f"{guest} cannot be provisioned on {view['node']}: " + "; ".join(plan_["problems"]))
    if test:
        return {"guest": guest, "node": view["node"], "plan": plan_, "steps": [], "changed": False}
    with _install_lock(guest):
        if shutil.which("udevadm"):
            _run(["udevadm", "settle", "--timeout=30"], ok=(0, 1))  # leg links of a fresh login
        # planned again under the lock: an install that held it may have changed everything
        plan_ = build_plan(view["cluster"]["name"], guest, spec, view["node"], _facts(spec))
        if plan_["problems"]:
            raise CommandExecutionError(f"{guest} cannot be provisioned on {view['node']}: "
                                        + "; ".join(plan_["problems"]))
        steps = _apply(view, guest, spec, plan_, minion_key)
    changed = any(step["changed"] for step in steps)
    return {"guest": guest, "node": view["node"], "plan": plan_, "steps": steps, "changed": changed}
