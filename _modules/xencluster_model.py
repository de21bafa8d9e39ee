"""
The xencluster cluster model: pillar schema, validation and per-node views.

Pure Python: no command runs here, nothing on the host is read or changed.
``validate`` checks the whole model and returns it normalised; ``node_view``
returns the slice one dom0 needs (the input of the plan stage of the states);
``redact`` hides CHAP secrets. Every problem found is reported at once, one
per line, each line starting with the dotted key path of the offending value::

    xencluster.guests.web1.disks.data.nodes: both legs on node1
    xencluster.nodes.node2.vgs.xcvg.pvs[1]: invalid PV path '/dev/sd b' (...)

Self-contained on purpose (Salt syncs single files): the size parser and the
IQN rule are copies of ``xencluster_lvm.parse_size`` and
``xencluster_lio.valid_iqn``; a unit test keeps them in agreement.

Schema (pillar key ``xencluster``; examples with every key explained:
``pillar/xencluster/lab.sls`` and ``pillar/xencluster/example-3node.sls``)::

    xencluster:
      cluster:                      # required
        name: lab                   # NAME (see below)
        iqn_base: iqn.2025-01.lab.xen   # IQN prefix of initiators and targets
        san_port: 3260              # iSCSI port of every portal (default 3260)
        replacement_timeout: 20     # seconds an imported leg's I/O waits for its lost session
                                    # before it fails (default 20; open-iscsi's own is 120)
        chap:                       # optional; default credentials of every node
          userid: xc-lab            # 1-255 of [A-Za-z0-9._:@-]
          password: ...             # 12-255 of [A-Za-z0-9!#%+,./:=@^_~-]
          mutual_userid: ...        # optional pair: the target authenticates too
          mutual_password: ...      # must differ from password
      nodes:                        # required: NAME -> node (or a list with name:)
        node1:
          minion: node1             # Salt minion id (default: the node name)
          initiator: iqn.2025-01.lab.xen:node1   # default <iqn_base>:<node>
          mgmt_interface: eth0      # management link (network changes on it need force)
          san:                      # required, 1-8 SAN paths; their IPs are the portals
            - {interface: eth1, address: 192.168.100.1/24}   # IPv4 or IPv6, with prefix
          vgs:                      # required (may be {}): VG -> its PVs
            xcvg: {pvs: [/dev/vdb, /dev/vdc]}
          bonds:                    # optional
            bond0: {mode: 802.3ad, links: [eth2, eth3], mtu: 9000,
                    lacp_rate: fast, xmit_hash_policy: layer2+3, miimon: 100}
            # active-backup takes primary: <one of links> instead of lacp_rate/xmit_hash_policy
          vlans:                    # optional: service VLAN id -> bridge and parent
                                    # ("parent", not "on": YAML reads a bare on as true)
            10: {bridge: br-svc10, parent: bond0}   # a bond, or a link in no bond
          chap: {...}               # optional: this node's own initiator credentials
      guests:                       # NAME -> guest (or a list with name:)
        web1:
          type: pvh                 # pvh (default) | pv | hvm
          node: node1               # optional home node: must be in the guest's pair
          nodes: [node1, node2]     # optional default pair of its disks
          vg: xcvg                  # optional default VG of its disks
          memory: 256M              # >= 32M, whole MiB (a bare number is bytes)
          vcpus: 1                  # 1-128 (default 1)
          sched: {weight: 256, cap: 0}   # credit2: weight 1-65535, cap 0-100*vcpus
          kernel: /vmlinuz          # pv/pvh: kernel (+ ramdisk, extra) OR bootloader
          ramdisk: /initrd.img
          extra: "console=hvc0"     # printable ASCII, no '"' or '\\'
          # bootloader: pygrub      # pv/pvh only; hvm takes none of these four
          backup: nas1              # a backup target, false, or omitted (backup.default)
          interfaces:               # ordered (eth0, eth1, ...); each: vlan OR bridge, and mac
            - {vlan: 10, mac: "00:16:3e:00:00:01"}     # on the VLAN's bridge on each node of the pair
            - {bridge: br-lab, mac: "00:16:3e:00:00:02"}   # on this existing dom0 bridge (IFACE name)
          disks:                    # required, ordered (xvda, xvdb, ...): a list with
            - name: root            # name: (or a mapping NAME -> disk)
              size: 10G             # bytes or k/M/G/T/P/E (optionally iB)
              nodes: [node1, node2] # two distinct nodes: one leg on each
              vg: xcvg              # must exist on both nodes
              stripes: 1            # 1-128, at most the VG's PVs on each node
              stripe_size: 64k      # power of two >= 4k; only with stripes >= 2
              filesystem: ext4      # ext2|ext3|ext4|xfs|btrfs|swap|none (default none)
              backup: true          # default: true unless swap
          provision:                # optional: how salt-run xencluster.provision installs it
            image: /srv/xencluster/images/debian12.tar.zst   # a tar of a root filesystem on the
                                    # dom0 that provisions (.tar .tar.gz .tgz .tar.xz .tar.zst), OR:
            # debootstrap: {suite: bookworm, mirror: "http://deb.debian.org/debian",
            #               variant: minbase, include: [mdadm, python3]}
            address: 10.99.0.20/24  # static address of interfaces[0], with prefix; omit for DHCP
            gateway: 10.99.0.1      # optional, only with address, same family (IPv4: on its subnet)
            dns: [10.99.0.1]        # optional, 1-3 IP addresses
            master: 10.99.0.1       # required: the salt master as the guest reaches it (IP or host name)
            highstate: true         # default true: the guest's highstate once its minion is up
            final_backup: false     # default false: deprovision backs it up first (needs a backup target)
      backup:                       # optional
        targets: {nas1: {node: node2, vg: backupvg}}   # where backup volumes live
        default: nas1               # optional target of guests without backup:
        retention: {daily: 7, weekly: 4, monthly: 6}   # counts >= 1; at least one

NAME (cluster, nodes, guests, disks, backup targets): 1-31 of ``[a-z0-9-]``
starting with a letter or digit; guest names may not start with ``snapshot``
or ``pvmove`` (LVM reserves them). Interface, bond and bridge names: 1-15 of
``[a-z0-9_-]`` starting with a letter. VG names: 1-64 of ``[A-Za-z0-9_-]``.

Interfaces: ``vlan: N`` puts the NIC on the bridge of service VLAN N on
whichever node of the pair runs the guest (each node must define VLAN N);
``bridge: NAME`` puts it on a bridge of that name that already exists on both
nodes of the pair, e.g. a management or lab bridge that is not a service VLAN.
The model cannot check that such a bridge exists (it is not made by
``xencluster_net``): a missing one fails the guest's start. It may not be a
VLAN's bridge (write ``vlan:``), a bond, a bond link, a VLAN parent or a SAN
interface of either node.

Provisioning (``provision``): the guest's FIRST disk is its root: provisioning
builds the md RAID1 and a filesystem on it from the dom0 (ext2, ext3, ext4 or
xfs), unpacks ``image`` or runs ``debootstrap`` (suite: a NAME; mirror:
default ``http://deb.debian.org/debian``; variant ``minbase`` (default) or
``buildd``; include: at most 64 Debian package names) into it and boots it
with the guest's ``kernel`` and ``ramdisk`` from the dom0 (so only pv and pvh
guests with both, no bootloader). ``address``, ``gateway`` and ``dns`` set up
``interfaces[0]``; the guest needs an interface to reach its ``master``.
``final_backup: true`` needs the guest to have a backup target. The state
``xencluster_guest.node_guests`` starts a provision guest only once its first
disk's leg carries the LVM tag ``xencluster.provisioned``.

Derived, per disk leg (one on each node of the disk's pair): the leg id
``<guest>.<disk>.<node>`` (at most 64 characters) is the LV name on its owner,
the LIO backstore name and the LUN's T10 unit serial (udev links it by that on
the importer); ``/dev/xencluster/<leg id>`` is its path on every node; each leg
is exported as LUN 0 of its own target ``<iqn_base>:<leg id>`` to the other
node of the pair only.

Design choices: every disk of a guest uses the same pair (a leg is exported to
its partner only, so a guest can run only where all its legs are); hvm guests
boot from their disks (firmware), never a dom0 kernel; the SAN runs on links or
bonds that carry no service VLAN; CHAP secrets are 12 to 255 characters (RFC
3720 asks for at least 96 bits; LIO's and open-iscsi's buffers hold 255),
the same rule as ``xencluster_lio``. Secrets never appear in a return, an
error or a log line.
"""

import copy
import difflib
import ipaddress
import logging
import re
import urllib.parse

from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_model"

REDACTED = "********"
ROOT = "xencluster"
LEG_DIR = "/dev/xencluster"
DEFAULT_SAN_PORT = 3260
# open-iscsi's node.session.timeo.replacement_timeout for the legs: how long a guest's writes
# stall when a leg's owner is gone before md in the guest fails that leg and goes on degraded.
# open-iscsi's default, 120 s, freezes every guest of the surviving node for two minutes; a
# mirror has a second leg, so failing fast is the better trade. Below 5 s, a bond failover or
# a busy target could fail a healthy leg (it is re-added with a bitmap resync).
DEFAULT_REPLACEMENT_TIMEOUT = 20
REPLACEMENT_TIMEOUT_RANGE = (5, 600)
LV_NAME_MAX = 64
MIB = 1024**2


def __virtual__():
    return __virtualname__


# --- the rules: patterns and limits ---------------------------------------------------


class _Pattern:
    """A regular expression to fullmatch() and the words that explain it."""

    def __init__(self, regex, text):
        self.regex = re.compile(regex)
        self.text = text

    def ok(self, value):
        return isinstance(value, str) and self.regex.fullmatch(value) is not None


NAME = _Pattern(r"[a-z0-9][a-z0-9-]{0,30}", "1-31 of a-z 0-9 '-', starting with a letter or digit")
IFACE = _Pattern(r"[a-z][a-z0-9_-]{0,14}", "1-15 of a-z 0-9 '_' '-', starting with a letter")
MGMT = _Pattern(r"(?=.{1,15}$)[a-z][a-z0-9_-]*(?:\.[0-9]{1,4})?", "an interface name, optionally .<vlan>")
VG = _Pattern(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", "1-64 of A-Z a-z 0-9 '_' '-', starting with a letter or digit")
MINION = _Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}", "a Salt minion id")
PV = _Pattern(r"/dev/[A-Za-z0-9_][A-Za-z0-9_./+-]{0,254}", "a device path under /dev/")
FILE = _Pattern(r"/[A-Za-z0-9_.,+=@/-]{0,4095}", "an absolute path of plain characters")
EXTRA = _Pattern(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,1024}", "printable ASCII without '\"' or '\\'")
MAC = _Pattern(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}", "six hex bytes separated by ':'")
CHAP_USER = _Pattern(r"[A-Za-z0-9._:@-]{1,255}", "1-255 of A-Z a-z 0-9 . _ : @ -")
CHAP_SECRET = _Pattern(r"[A-Za-z0-9!#%+,./:=@^_~-]{12,255}", "12-255 of A-Z a-z 0-9 !#%+,./:=@^_~-")
IMAGE = _Pattern(
    r"/[A-Za-z0-9._+/-]{0,4090}\.(?:tar|tar\.gz|tgz|tar\.xz|tar\.zst)",
    "an absolute path of A-Z a-z 0-9 . _ + / -, no '..', ending in .tar, .tar.gz, .tgz, .tar.xz or .tar.zst",
)
PACKAGE = _Pattern(r"[a-z0-9][a-z0-9+.-]{1,127}", "a Debian package name: 2-128 of a-z 0-9 + . -")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = _Pattern(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*", "an RFC 1123 host name")
# No spaces, quotes or shell metacharacters; no query or fragment (a mirror needs neither).
MIRROR = _Pattern(
    r"https?://(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
    r"(?:/(?:[A-Za-z0-9._~+=,:@-]|%[0-9A-Fa-f]{2})*)*",
    "an http:// or https:// URL: a host name or IP address, an optional port, "
    "a path of A-Z a-z 0-9 . _ ~ + = , : @ - and %XX",
)

TYPES = ("pvh", "pv", "hvm")
BOND_MODES = ("active-backup", "802.3ad")
LACP_RATES = ("slow", "fast")
HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4")
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "swap", "none")
BOOTLOADERS = ("pygrub",)
RETENTION = ("daily", "weekly", "monthly")
ROOT_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")
VARIANTS = ("minbase", "buildd")
DEFAULT_MIRROR = "http://deb.debian.org/debian"  # debootstrap's own default for Debian
MAX_PACKAGES = 64
MAX_DNS = 3
MAX_URL = 1024
LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
MAX_STRIPES = 128
MIN_MEMORY = 32 * MIB
MAX_MEMORY = 1 << 46  # 64 TiB, as xencluster_xl

TOP_KEYS = ("cluster", "nodes", "guests", "backup")
CLUSTER_KEYS = ("name", "iqn_base", "san_port", "replacement_timeout", "chap")
CHAP_KEYS = ("userid", "password", "mutual_userid", "mutual_password")
NODE_KEYS = ("minion", "initiator", "mgmt_interface", "san", "vgs", "bonds", "vlans", "chap")
SAN_KEYS = ("interface", "address")
BOND_KEYS = ("mode", "links", "mtu", "primary", "lacp_rate", "xmit_hash_policy", "miimon")
VLAN_KEYS = ("bridge", "parent")
GUEST_KEYS = (
    "type", "node", "nodes", "vg", "memory", "vcpus", "sched", "kernel", "ramdisk",
    "extra", "bootloader", "backup", "interfaces", "disks", "provision",
)  # fmt: skip
INTERFACE_KEYS = ("vlan", "bridge", "mac")
PROVISION_KEYS = ("image", "debootstrap", "address", "gateway", "dns", "master", "highstate", "final_backup")
DEBOOTSTRAP_KEYS = ("suite", "mirror", "variant", "include")
DISK_KEYS = ("size", "nodes", "vg", "stripes", "stripe_size", "filesystem", "backup")
BACKUP_KEYS = ("targets", "default", "retention")

# --- sizes and IQNs: the rules of xencluster_lvm.parse_size and xencluster_lio.valid_iqn


_SIZE_RE = re.compile(r"([0-9]{1,20})([kKmMgGtTpPeE](?:iB)?)?")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_IQN_RE = re.compile(
    r"iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])"
    r"\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
    r"(?::[a-z0-9][a-z0-9.:-]{0,190})?"
)
_RTSLIB_IQN_RE = re.compile(r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*")
_IQN_MAX = 223


def _parse_size(size):
    """Bytes from an int or e.g. ``10G``; ValueError otherwise (as xencluster_lvm.parse_size)."""
    if isinstance(size, bool):
        raise ValueError(f"invalid size {_show(size)}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str) and _SIZE_RE.fullmatch(size):
        digits, unit = _SIZE_RE.fullmatch(size).groups()
        value = int(digits) * 1024 ** _POWERS[unit[0].lower()] if unit else int(digits)
    else:
        raise ValueError(f"invalid size {_show(size)} (bytes, or a number with k, M, G, T, P or E)")
    if value <= 0:
        raise ValueError(f"size must be positive: {_show(size)}")
    return value


def _valid_iqn(iqn):
    """The rule of xencluster_lio.valid_iqn."""
    return (
        isinstance(iqn, str)
        and len(iqn) <= _IQN_MAX
        and _IQN_RE.fullmatch(iqn) is not None
        and _RTSLIB_IQN_RE.match(iqn) is not None
        and " " not in iqn
        and "_" not in iqn
    )


# --- reporting problems --------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_+-]{1,64}")
_KINDS = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}


def _show(value):
    """A one-line, bounded rendering of a (never secret) value."""
    text = repr(value)
    return text if len(text) <= 72 else text[:69] + "..."


def _kind(value):
    if value is None:
        return "null"
    return _KINDS.get(type(value), type(value).__name__)


def _join(path, key):
    """``a.b`` for plain keys and ints, ``a['odd key']`` otherwise (always one line)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}.{key}"
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_show(key)}]"


class _Problems:
    """Collects ``<key path>: <message>`` lines; the checks never stop at the first."""

    def __init__(self):
        self.lines = []
        self.missing = set()  # paths already reported as required: nothing more to say

    def add(self, path, message):
        line = f"{path}: {message}"
        if line not in self.lines and path not in self.missing:
            self.lines.append(line)

    def mapping(self, value, path, optional=False):
        if isinstance(value, dict):
            return value
        if value is None and optional:
            return {}
        self.add(path, f"must be a mapping, not {_kind(value)}")
        return None

    def keys(self, raw, path, allowed, required=()):
        for key in raw:
            if key not in allowed:
                self.add(_join(path, key), f"unknown key ({_hint(key, allowed)}allowed: {', '.join(allowed)})")
        for key in required:
            if key not in raw:
                self.add(_join(path, key), "is required")
                self.missing.add(_join(path, key))

    def items(self, value, path, low, high):
        if isinstance(value, list) and low <= len(value) <= high:
            return value
        self.add(path, f"must be a list of {low} to {high} items, not {_kind(value)}"
                 + (f" of {len(value)}" if isinstance(value, list) else ""))
        return None

    def match(self, value, path, pattern, what):
        if pattern.ok(value):
            return value
        self.add(path, f"invalid {what} {_show(value)} ({pattern.text})")
        return None

    def choice(self, value, path, choices):
        if isinstance(value, str) and value in choices:
            return value
        self.add(path, f"must be one of {', '.join(choices)}, not {_show(value)}")
        return None

    def integer(self, value, path, low, high):
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        self.add(path, f"must be an integer from {low} to {high}, not {_show(value)}")
        return None

    def boolean(self, value, path):
        if isinstance(value, bool):
            return value
        self.add(path, f"must be true or false, not {_show(value)}")
        return None

    def size(self, value, path):
        try:
            return _parse_size(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return None


def _hint(key, allowed):
    if isinstance(key, bool):
        return "YAML reads unquoted on/off/yes/no/true/false as a boolean; "
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _named(p, raw, path, what):
    """[(name, spec, path)] from a mapping NAME -> spec or a list of specs with ``name``."""
    if isinstance(raw, dict):
        return [(name, spec, _join(path, name)) for name, spec in raw.items()]
    if not isinstance(raw, list):
        p.add(path, f"must be a mapping of {what}s (or a list with name:), not {_kind(raw)}")
        return []
    out, seen = [], {}
    for index, spec in enumerate(raw):
        ipath = f"{path}[{index}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            p.add(ipath, f"a {what} in a list must be a mapping with a name")
            continue
        spec = dict(spec)
        name = spec.pop("name")
        if name in seen:
            p.add(ipath, f"duplicate {what} name {_show(name)} (also at {seen[name]})")
            continue
        seen[name] = _join(path, name)
        out.append((name, spec, seen[name]))
    return out


def _vlan_id(p, value, path):
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 4:
        value = int(value)
    return p.integer(value, path, 1, 4094)


# --- cluster and CHAP --------------------------------------------------------------------


def _chap(p, raw, path):
    """Checked CHAP credentials or None; no message ever contains a secret."""
    if raw is None:
        return None
    if p.mapping(raw, path) is None:
        return None
    p.keys(raw, path, CHAP_KEYS, ("userid", "password"))
    out = {key: raw.get(key) for key in CHAP_KEYS}
    for key in ("userid", "mutual_userid"):
        if out[key] is not None:
            p.match(out[key], _join(path, key), CHAP_USER, "CHAP user id")
    for key in ("password", "mutual_password"):
        if out[key] is not None and not CHAP_SECRET.ok(out[key]):
            p.add(_join(path, key), f"invalid CHAP secret (not shown): must be {CHAP_SECRET.text}")
    if (out["mutual_userid"] is None) != (out["mutual_password"] is None):
        missing = "mutual_password" if out["mutual_password"] is None else "mutual_userid"
        p.add(_join(path, missing), "mutual CHAP needs both mutual_userid and mutual_password")
    if out["mutual_password"] is not None and out["mutual_password"] == out["password"]:
        p.add(_join(path, "mutual_password"), "must differ from password (not shown)")
    return out


def _cluster(p, raw):
    path = f"{ROOT}.cluster"
    raw = p.mapping(raw, path)
    if raw is None:
        return {"name": None, "iqn_base": None, "san_port": DEFAULT_SAN_PORT,
                "replacement_timeout": DEFAULT_REPLACEMENT_TIMEOUT, "chap": None}
    p.keys(raw, path, CLUSTER_KEYS, ("name", "iqn_base"))
    iqn_base = raw.get("iqn_base")
    if "iqn_base" in raw and not _valid_iqn(iqn_base):
        p.add(f"{path}.iqn_base", f"invalid IQN {_show(iqn_base)} (iqn.YYYY-MM.<reversed domain "
              "with at least two labels>[:name], lower case, e.g. iqn.2025-01.lab.xen)")
        iqn_base = None
    elif iqn_base is not None and len(iqn_base) + 1 + LV_NAME_MAX > _IQN_MAX:
        p.add(f"{path}.iqn_base", f"too long: target names <iqn_base>:<leg id> must fit in {_IQN_MAX} characters")
        iqn_base = None
    return {
        "name": p.match(raw.get("name"), f"{path}.name", NAME, "cluster name") if "name" in raw else None,
        "iqn_base": iqn_base,
        "san_port": p.integer(raw.get("san_port", DEFAULT_SAN_PORT), f"{path}.san_port", 1, 65535),
        "replacement_timeout": p.integer(raw.get("replacement_timeout", DEFAULT_REPLACEMENT_TIMEOUT),
                                         f"{path}.replacement_timeout", *REPLACEMENT_TIMEOUT_RANGE),
        "chap": _chap(p, raw.get("chap"), f"{path}.chap"),
    }


# --- nodes ----------------------------------------------------------------------------------


def _address(p, value, path, role="a SAN address"):
    """An ip_interface with an explicit prefix that can be ``role`` (a host's own address), or None."""
    try:
        if not isinstance(value, str) or "/" not in value or "%" in value:
            raise ValueError
        iface = ipaddress.ip_interface(value)
    except ValueError:
        p.add(path, f"invalid address {_show(value)} (an IPv4 or IPv6 address with its prefix length, "
              "e.g. 192.168.100.1/24)")
        return None
    ip, net = iface.ip, iface.network
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        p.add(path, f"{ip} cannot be {role} (loopback, multicast, unspecified or link-local)")
        return None
    if ip.version == 4 and net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
        p.add(path, f"{ip} is the network or broadcast address of {net}")
        return None
    return iface


def _portal(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _san(p, raw, path, port):
    """[{interface, address, ip, network, portal}], or None if any entry is wrong."""
    items = p.items(raw, path, 1, 8)
    if items is None:
        return None
    out = []
    for index, item in enumerate(items):
        ipath = f"{path}[{index}]"
        if p.mapping(item, ipath) is None:
            out = None
            continue
        p.keys(item, ipath, SAN_KEYS, SAN_KEYS)
        iface = p.match(item.get("interface"), f"{ipath}.interface", IFACE, "interface name")
        addr = _address(p, item.get("address"), f"{ipath}.address")
        if out is None or iface is None or addr is None:
            out = None
            continue
        ip = str(addr.ip)
        out.append({"interface": iface, "address": addr.with_prefixlen, "ip": ip,
                    "network": str(addr.network), "portal": _portal(ip, port)})
    return out


def _pvs(p, raw, path, seen, vg):
    items = p.items(raw, path, 1, MAX_STRIPES)
    if items is None:
        return None
    out = []
    for index, pv in enumerate(items):
        ipath = f"{path}[{index}]"
        if not PV.ok(pv) or ".." in pv:
            p.add(ipath, f"invalid PV path {_show(pv)} ({PV.text}, no '..')")
        elif pv in seen:
            p.add(ipath, f"{pv} is already a PV of VG {seen[pv]}")
        else:
            seen[pv] = vg
            out.append(pv)
    return out if len(out) == len(items) else None


def _vgs(p, raw, path):
    """{vg: {"pvs": [...] or None}}, or None if ``vgs`` is not a mapping."""
    if p.mapping(raw, path) is None:
        return None
    vgs, seen = {}, {}
    for vg, spec in raw.items():
        vpath = _join(path, vg)
        p.match(vg, vpath, VG, "VG name")
        if p.mapping(spec, vpath) is None:
            vgs[vg] = {"pvs": None}
            continue
        p.keys(spec, vpath, ("pvs",), ("pvs",))
        vgs[vg] = {"pvs": _pvs(p, spec.get("pvs"), f"{vpath}.pvs", seen, vg)}
    return vgs


def _links(p, raw, path):
    items = p.items(raw, path, 1, 8)
    if items is None:
        return None
    for index, link in enumerate(items):
        p.match(link, f"{path}[{index}]", IFACE, "link name")
        if link in items[:index]:
            p.add(f"{path}[{index}]", f"{link} is listed twice")
    return [link for link in items if IFACE.ok(link)]


def _bond(p, raw, path):
    if p.mapping(raw, path) is None:
        return None
    p.keys(raw, path, BOND_KEYS, ("mode", "links"))
    mode = p.choice(raw.get("mode"), f"{path}.mode", BOND_MODES)
    bond = {
        "mode": mode,
        "links": _links(p, raw.get("links"), f"{path}.links"),
        "mtu": p.integer(raw["mtu"], f"{path}.mtu", 576, 9216) if "mtu" in raw else None,
        "miimon": p.integer(raw.get("miimon", 100), f"{path}.miimon", 0, 10000),
        "primary": None, "lacp_rate": None, "xmit_hash_policy": None,
    }  # fmt: skip
    if mode == "802.3ad":
        bond["lacp_rate"] = p.choice(raw.get("lacp_rate", "fast"), f"{path}.lacp_rate", LACP_RATES)
        bond["xmit_hash_policy"] = p.choice(
            raw.get("xmit_hash_policy", "layer2+3"), f"{path}.xmit_hash_policy", HASH_POLICIES
        )
    for key in ("lacp_rate", "xmit_hash_policy") if mode == "active-backup" else ():
        if key in raw:
            p.add(f"{path}.{key}", "only for mode 802.3ad")
    if "primary" in raw:
        if mode != "active-backup":
            p.add(f"{path}.primary", "only for mode active-backup")
        elif raw["primary"] not in (bond["links"] or []):
            p.add(f"{path}.primary", f"{_show(raw['primary'])} is not one of the bond's links")
        else:
            bond["primary"] = raw["primary"]
    return bond


def _bonds(p, raw, path):
    if p.mapping(raw, path, optional=True) is None:
        return None
    bonds = {}
    for name, spec in (raw or {}).items():
        bpath = _join(path, name)
        p.match(name, bpath, IFACE, "bond name")
        bonds[name] = _bond(p, spec, bpath)
    return bonds


def _vlans(p, raw, path):
    """{vlan id (int): {"bridge", "parent"}}, or None if ``vlans`` is not a mapping."""
    if p.mapping(raw, path, optional=True) is None:
        return None
    vlans = {}
    for key, spec in (raw or {}).items():
        vpath = _join(path, key)
        vid = _vlan_id(p, key, vpath)
        if p.mapping(spec, vpath) is None:
            continue
        p.keys(spec, vpath, VLAN_KEYS, VLAN_KEYS)
        bridge = p.match(spec.get("bridge"), f"{vpath}.bridge", IFACE, "bridge name")
        parent = p.match(spec.get("parent"), f"{vpath}.parent", IFACE, "interface name")
        if vid is not None and vid in vlans:
            p.add(vpath, f"VLAN {vid} is defined twice")
        elif vid is not None and bridge and parent:
            vlans[vid] = {"bridge": bridge, "parent": parent}
    return vlans


def _members(p, node, path):
    """{link: bond} of every bond link; a link reused or named like a bond is a problem."""
    members, bonds = {}, node["bonds"] or {}
    for bond, spec in bonds.items():
        for index, link in enumerate((spec or {}).get("links") or []):
            lpath = f"{_join(f'{path}.bonds', bond)}.links[{index}]"
            if link in members:
                p.add(lpath, f"{link} is already a link of {members[link]}")
            elif link in bonds:
                p.add(lpath, f"{link} is a bond, not a link")
            else:
                members[link] = bond
    return members


def _check_vlans(p, node, path, members):
    bridges, vlans = {}, node["vlans"] or {}
    taken = set(members) | set(node["bonds"] or {}) | {v["parent"] for v in vlans.values()}
    for vid, spec in vlans.items():
        vpath, parent = f"{path}.vlans.{vid}", spec["parent"]
        if parent in members:
            p.add(f"{vpath}.parent", f"{parent} is a link of {members[parent]}; put the VLAN on the bond")
        if spec["bridge"] in bridges:
            p.add(f"{vpath}.bridge", f"{spec['bridge']} is already the bridge of VLAN {bridges[spec['bridge']]}")
        elif spec["bridge"] in taken:
            p.add(f"{vpath}.bridge", f"{spec['bridge']} is already a link or bond of this node")
        bridges[spec["bridge"]] = vid


def _check_san(p, node, path, members):
    """The SAN is kept apart: on no bond link, on no interface carrying VLANs, not management."""
    parents = {}
    for vid, spec in (node["vlans"] or {}).items():
        parents.setdefault(spec["parent"], []).append(str(vid))
    bridges = {spec["bridge"] for spec in (node["vlans"] or {}).values()}
    for index, entry in enumerate(node["san"] or []):
        ipath, iface = f"{path}.san[{index}].interface", entry["interface"]
        if iface in members:
            p.add(ipath, f"{iface} is a link of {members[iface]}; use the bond itself or a link in no bond")
        elif iface in parents:
            p.add(ipath, f"{iface} carries service VLANs ({', '.join(parents[iface])}); "
                  "keep the SAN apart from service traffic")
        elif iface in bridges:
            p.add(ipath, f"{iface} is a service VLAN bridge; keep the SAN apart from service traffic")
    mgmt = node["mgmt_interface"]
    if mgmt is not None and mgmt in {e["interface"] for e in node["san"] or []}:
        p.add(f"{path}.mgmt_interface", f"{mgmt} is a SAN interface; keep management off the SAN")
    elif mgmt in members:
        p.add(f"{path}.mgmt_interface", f"{mgmt} is a link of {members[mgmt]}; use the bond")


def _node(p, name, raw, path, cluster):
    p.match(name, path, NAME, "node name")
    empty = dict.fromkeys(("minion", "initiator", "mgmt_interface", "san", "vgs", "bonds", "vlans", "chap"))
    if p.mapping(raw, path) is None:
        return {"name": name, **empty}
    p.keys(raw, path, NODE_KEYS, ("san", "vgs"))
    node = {
        "name": name,
        "minion": p.match(raw.get("minion", name), f"{path}.minion", MINION, "minion id"),
        "initiator": _initiator(p, raw, path, name, cluster),
        "mgmt_interface": (
            p.match(raw["mgmt_interface"], f"{path}.mgmt_interface", MGMT, "interface name")
            if "mgmt_interface" in raw else None
        ),
        "san": _san(p, raw.get("san"), f"{path}.san", cluster["san_port"]) if "san" in raw else None,
        "vgs": _vgs(p, raw.get("vgs"), f"{path}.vgs") if "vgs" in raw else None,
        "bonds": _bonds(p, raw.get("bonds"), f"{path}.bonds"),
        "vlans": _vlans(p, raw.get("vlans"), f"{path}.vlans"),
        "chap": _chap(p, raw.get("chap"), f"{path}.chap"),
    }
    members = _members(p, node, path)
    _check_vlans(p, node, path, members)
    _check_san(p, node, path, members)
    return node


def _initiator(p, raw, path, name, cluster):
    if "initiator" in raw:
        if _valid_iqn(raw["initiator"]):
            return raw["initiator"]
        p.add(f"{path}.initiator", f"invalid IQN {_show(raw['initiator'])} (e.g. iqn.2025-01.lab.xen:node1)")
        return None
    if cluster["iqn_base"] and NAME.ok(name):
        return f"{cluster['iqn_base']}:{name}"
    return None


def _unique(p, nodes, what, values):
    """Report a value (initiator, SAN address, minion id) that two nodes share."""
    owner = {}
    for name, node in nodes.items():
        for subpath, value in values(node):
            if value is None:
                continue
            if value in owner and owner[value] != name:
                p.add(f"{_join(f'{ROOT}.nodes', name)}.{subpath}", f"{value} is also the {what} of {owner[value]}")
            elif value in owner:
                p.add(f"{_join(f'{ROOT}.nodes', name)}.{subpath}", f"{value} is listed twice")
            owner.setdefault(value, name)


def _nodes(p, raw, cluster):
    nodes = {}
    for name, spec, path in _named(p, _by_name(raw), f"{ROOT}.nodes", "node"):
        nodes[name] = _node(p, name, spec, path, cluster)
    _unique(p, nodes, "initiator IQN", lambda n: [("initiator", n["initiator"])])
    _unique(p, nodes, "SAN address", lambda n: [(f"san[{i}].address", e["ip"]) for i, e in enumerate(n["san"] or [])])
    _unique(p, nodes, "minion id", lambda n: [("minion", n["minion"])])
    return nodes


# --- backup -----------------------------------------------------------------------------------


def _vg_on(p, nodes, node, vg, path):
    """Report a VG missing on a (known, readable) node."""
    vgs = nodes.get(node, {}).get("vgs") if isinstance(node, str) else None
    if vgs is not None and vg is not None and vg not in vgs:
        p.add(path, f"VG {vg} does not exist on {node}")


def _backup(p, raw, nodes):
    path = f"{ROOT}.backup"
    out = {"targets": {}, "default": None, "retention": dict.fromkeys(RETENTION, 0)}
    if raw is None or p.mapping(raw, path) is None:
        return out
    p.keys(raw, path, BACKUP_KEYS, ("targets", "retention"))
    targets = p.mapping(raw.get("targets"), f"{path}.targets") if "targets" in raw else None
    if targets == {}:
        p.add(f"{path}.targets", "name at least one backup target (or leave out the backup section)")
    for name, spec in (targets or {}).items():
        out["targets"][name] = _backup_target(p, name, spec, _join(f"{path}.targets", name), nodes)
    if "default" in raw:
        if isinstance(raw["default"], str) and raw["default"] in out["targets"]:
            out["default"] = raw["default"]
        else:
            p.add(f"{path}.default", f"unknown backup target {_show(raw['default'])}")
    if "retention" in raw:
        out["retention"] = _retention(p, raw["retention"], f"{path}.retention")
    return out


def _backup_target(p, name, spec, path, nodes):
    p.match(name, path, NAME, "backup target name")
    if p.mapping(spec, path) is None:
        return None
    p.keys(spec, path, ("node", "vg"), ("node", "vg"))
    node, vg = spec.get("node"), p.match(spec.get("vg"), f"{path}.vg", VG, "VG name")
    if "node" in spec and (not isinstance(node, str) or node not in nodes):
        p.add(f"{path}.node", f"unknown node {_show(node)}")
    else:
        _vg_on(p, nodes, node, vg, f"{path}.vg")
    return {"node": node, "vg": vg}


def _retention(p, raw, path):
    out = dict.fromkeys(RETENTION, 0)
    if p.mapping(raw, path) is None:
        return out
    p.keys(raw, path, RETENTION)
    if not any(key in raw for key in RETENTION):
        p.add(path, f"keep at least one of {', '.join(RETENTION)}")
    for key in RETENTION:
        if key in raw:
            out[key] = p.integer(raw[key], f"{path}.{key}", 1, 10000)
    return out


# --- guests --------------------------------------------------------------------------------


def _guest_name(p, name, path):
    if p.match(name, path, NAME, "guest name") and name.startswith(LV_RESERVED_PREFIXES):
        p.add(path, f"guest names may not start with {' or '.join(LV_RESERVED_PREFIXES)} (reserved by LVM)")


def _memory(p, raw, path):
    size = p.size(raw, path)
    if size is None:
        return None
    if size < MIN_MEMORY:
        p.add(path, f"{size} bytes is less than 32M (a number without a unit is bytes: write e.g. 256M)")
    elif size % MIB or size > MAX_MEMORY:
        p.add(path, f"{_show(raw)} must be whole MiB and at most 64T")
    else:
        return size // MIB
    return None


def _sched(p, raw, path, vcpus):
    raw = p.mapping(raw, path, optional=True)
    if raw is None:
        return None
    p.keys(raw, path, ("weight", "cap"))
    return {
        "weight": p.integer(raw.get("weight", 256), f"{path}.weight", 1, 65535),
        "cap": p.integer(raw.get("cap", 0), f"{path}.cap", 0, 100 * (vcpus or 128)),
    }


def _boot(p, raw, path, gtype):
    """kernel/ramdisk/extra or bootloader, by guest type."""
    boot = dict.fromkeys(("kernel", "ramdisk", "extra", "bootloader"))
    for key in ("kernel", "ramdisk"):
        if key in raw:
            value = raw[key]
            if FILE.ok(value) and "/../" not in f"{value}/":
                boot[key] = value
            else:
                p.add(f"{path}.{key}", f"invalid path {_show(value)} ({FILE.text}, no '..')")
    if "extra" in raw:
        boot["extra"] = p.match(raw["extra"], f"{path}.extra", EXTRA, "kernel command line")
    if "bootloader" in raw:
        boot["bootloader"] = p.choice(raw["bootloader"], f"{path}.bootloader", BOOTLOADERS)
    if gtype == "hvm":
        for key in ("kernel", "ramdisk", "extra", "bootloader"):
            if key in raw:
                p.add(f"{path}.{key}", "hvm guests boot from their disks: no kernel, ramdisk, extra or bootloader")
    elif gtype in ("pv", "pvh"):
        if "kernel" in raw and "bootloader" in raw:
            p.add(f"{path}.bootloader", f"a {gtype} guest takes kernel or bootloader, not both")
        elif "kernel" not in raw and "bootloader" not in raw:
            p.add(path, f"a {gtype} guest needs kernel (direct boot) or bootloader: pygrub")
        for key in ("ramdisk", "extra"):
            if key in raw and "kernel" not in raw:
                p.add(f"{path}.{key}", "only with kernel")
    return boot


def _guest_backup(p, raw, path, backup):
    value = raw.get("backup", True if backup["default"] else False)
    if value is True:
        if backup["default"] is None:
            p.add(f"{path}.backup", "true needs backup.default; name a backup target instead")
        return backup["default"]
    if value is False or value is None:
        return None
    if isinstance(value, str) and value in backup["targets"]:
        return value
    p.add(f"{path}.backup", f"unknown backup target {_show(value)}")
    return None


def _pair(p, value, path, nodes):
    """Two distinct known node names, or None."""
    if not isinstance(value, list) or len(value) != 2:
        p.add(path, f"must be a list of exactly two nodes, not {_kind(value)}"
              + (f" of {len(value)}" if isinstance(value, list) else ""))
        return None
    ok = True
    for index, node in enumerate(value):
        if not isinstance(node, str) or node not in nodes:
            p.add(f"{path}[{index}]", f"unknown node {_show(node)}")
            ok = False
    if ok and value[0] == value[1]:
        p.add(path, f"both legs on {value[0]}")
        return None
    return list(value) if ok else None


def _stripe_size(p, raw, path, stripes):
    if "stripe_size" not in raw:
        return None
    size = p.size(raw["stripe_size"], f"{path}.stripe_size")
    if size is not None and (size < 4096 or size & (size - 1)):
        p.add(f"{path}.stripe_size", f"{_show(raw['stripe_size'])} is not a power of two of at least 4k")
    elif size is not None and stripes is not None and stripes < 2:
        p.add(f"{path}.stripe_size", "only with stripes >= 2")
    return size


def _check_stripes(p, disk, path, nodes):
    for node in disk["nodes"] or []:
        vg = (nodes[node]["vgs"] or {}).get(disk["vg"]) or {}
        pvs = vg.get("pvs")
        if disk["stripes"] and pvs and disk["stripes"] > len(pvs):
            p.add(f"{path}.stripes", f"{disk['stripes']} stripes but VG {disk['vg']} has "
                  f"{len(pvs)} PV{'s' if len(pvs) > 1 else ''} on {node}")


def _disk_backup(p, raw, path, filesystem):
    if "backup" not in raw:
        return filesystem != "swap"
    value = p.boolean(raw["backup"], f"{path}.backup")
    if value and filesystem == "swap":
        p.add(f"{path}.backup", "swap disks are never backed up")
    return bool(value)


def _disk(p, name, raw, path, guest, ctx):
    p.match(name, path, NAME, "disk name")
    if p.mapping(raw, path) is None:
        return None
    p.keys(raw, path, DISK_KEYS, ("size",))
    nodes = _disk_nodes(p, raw, path, guest, ctx)
    vg = guest["vg"]
    if "vg" in raw:
        vg = p.match(raw["vg"], f"{path}.vg", VG, "VG name")
    elif not guest["_given"]["vg"]:
        p.add(f"{path}.vg", "is required (here or as the guest's vg)")
    for node in nodes or []:
        _vg_on(p, ctx["nodes"], node, vg, f"{path}.vg")
    stripes = p.integer(raw.get("stripes", 1), f"{path}.stripes", 1, MAX_STRIPES)
    filesystem = p.choice(raw.get("filesystem", "none"), f"{path}.filesystem", FILESYSTEMS)
    disk = {
        "name": name, "size": p.size(raw.get("size"), f"{path}.size") if "size" in raw else None,
        "nodes": nodes, "vg": vg, "stripes": stripes,
        "stripe_size": _stripe_size(p, raw, path, stripes),
        "filesystem": filesystem, "backup": _disk_backup(p, raw, path, filesystem),
    }  # fmt: skip
    _check_stripes(p, disk, path, ctx["nodes"])
    return disk


def _disk_nodes(p, raw, path, guest, ctx):
    if "nodes" not in raw and not guest["_given"]["nodes"]:
        p.add(f"{path}.nodes", "is required (here or as the guest's nodes)")
        return None
    nodes = _pair(p, raw["nodes"], f"{path}.nodes", ctx["nodes"]) if "nodes" in raw else guest["nodes"]
    if nodes:
        ctx["pairs"].setdefault(frozenset(nodes), (tuple(nodes), f"{path}.nodes"))
    return nodes


def _leg(cluster, guest, disk, node):
    lv = f"{guest}.{disk['name']}.{node}"
    return {
        "node": node, "vg": disk["vg"], "lv": lv, "path": f"{LEG_DIR}/{lv}",
        "device": f"/dev/{disk['vg']}/{lv}", "size": disk["size"],
        "stripes": disk["stripes"], "stripe_size": disk["stripe_size"],
        "backstore": lv, "serial": lv, "target": f"{cluster['iqn_base']}:{lv}", "lun": 0,
    }  # fmt: skip


def _legs(p, guest, disk, path, cluster):
    if not disk["nodes"] or not NAME.ok(guest) or not NAME.ok(disk["name"]):
        return []
    legs = [_leg(cluster, guest, disk, node) for node in disk["nodes"]]
    for leg in legs:
        if len(leg["lv"]) > LV_NAME_MAX:
            p.add(path, f"leg id {leg['lv']} is {len(leg['lv'])} characters; LV names are at most {LV_NAME_MAX} "
                  "(shorten the guest or disk name)")
        elif cluster["iqn_base"] and not _valid_iqn(leg["target"]):
            p.add(path, f"target IQN {leg['target']} of leg {leg['lv']} is not a valid IQN")
    return legs


def _disks(p, raw, path, guest, ctx):
    dpath = f"{path}.disks"
    entries = _named(p, raw.get("disks"), dpath, "disk") if "disks" in raw else []
    if raw.get("disks") in ({}, []):
        p.add(dpath, "a guest needs at least one disk")
    disks = []
    for name, spec, spath in entries:
        disk = _disk(p, name, spec, spath, guest, ctx)
        if disk is None:
            continue
        disk.update(index=len(disks), vdev=f"xvd{chr(ord('a') + len(disks))}" if len(disks) < 26 else None)
        disk["legs"] = _legs(p, guest["name"], disk, spath, ctx["cluster"])
        disk["_path"] = spath
        disks.append(disk)
    if len(disks) > 26:
        p.add(dpath, "at most 26 disks (xvda to xvdz)")
    return disks


def _check_pair(p, guest, path):
    """All disks on the same pair; the home node in it. Returns the guest's pair."""
    pairs = [(d, d["nodes"]) for d in guest["disks"] if d["nodes"]]
    pair = guest["nodes"] or (pairs[0][1] if pairs else None)
    for disk, nodes in pairs:
        if set(nodes) != set(pair):
            p.add(f"{disk['_path']}.nodes", f"{', '.join(nodes)} differs from the guest's pair "
                  f"{', '.join(pair)}: all disks of a guest must be on the same two nodes")
    home = guest["node"]
    for disk, nodes in pairs:
        if home is not None and home not in nodes:
            p.add(f"{path}.node", f"{home} is not in the pair of disk {disk['name']} ({', '.join(nodes)})")
    if not pairs and pair and home is not None and home not in pair:
        p.add(f"{path}.node", f"{home} is not in the guest's pair ({', '.join(pair)})")
    return pair


def _mac(p, value, path, macs):
    if not MAC.ok(value):
        p.add(path, f"invalid MAC {_show(value)} ({MAC.text})")
        return None
    mac = value.lower()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        p.add(path, f"{mac} is not a unicast MAC (the first byte must be even; Xen's prefix is 00:16:3e)")
    elif mac in macs:
        p.add(path, f"duplicate MAC {mac}, also at {macs[mac]}")
    else:
        macs[mac] = path
    return mac


def _vlan_bridges(p, vlan, path, pair, ctx):
    """{node: bridge of VLAN ``vlan`` there} for each node of the pair."""
    bridges = {}
    for node in pair or []:
        vlans = ctx["nodes"][node]["vlans"]
        if vlan is not None and vlans is not None and vlan not in vlans:
            p.add(path, f"VLAN {vlan} has no bridge on {node}")
        elif vlan is not None and vlans is not None:
            bridges[node] = vlans[vlan]["bridge"]
    return bridges


def _not_bridges(node):
    """{interface name: what it is} of a node's interfaces that a guest NIC must not be put on by name."""
    roles = {}
    for vid, spec in (node["vlans"] or {}).items():
        roles[spec["parent"]] = f"the parent of VLAN {vid}"
    for bond, spec in (node["bonds"] or {}).items():
        roles[bond] = "a bond"
        for link in (spec or {}).get("links") or []:
            roles[link] = f"a link of {bond}"
    for entry in node["san"] or []:
        roles[entry["interface"]] = "a SAN interface"
    return roles


def _plain_bridges(p, bridge, path, pair, ctx):
    """{node: bridge} for each node of the pair; the model cannot see whether the bridge exists."""
    if bridge is None:
        return {}
    for node in pair or []:
        spec = ctx["nodes"][node]
        vid = next((v for v, vlan in (spec["vlans"] or {}).items() if vlan["bridge"] == bridge), None)
        role = _not_bridges(spec).get(bridge)
        if vid is not None:
            p.add(path, f"{bridge} is the bridge of VLAN {vid} on {node}: write vlan: {vid} instead")
        elif role:
            p.add(path, f"{bridge} is {role} on {node}, not a bridge: a guest NIC goes on a bridge "
                  "(and never on the SAN)")
    return {node: bridge for node in pair or []}


def _interface(p, item, it, pair, ctx):
    """One interface: on a service VLAN's bridge (``vlan``) or on a plain dom0 bridge (``bridge``)."""
    p.keys(item, it, INTERFACE_KEYS, ("mac",))
    if "vlan" in item and "bridge" in item:
        p.add(it, "takes vlan or bridge, not both")
    elif "vlan" not in item and "bridge" not in item:
        p.add(it, "needs vlan (a service VLAN of the model) or bridge (an existing bridge on the dom0s)")
    mac = _mac(p, item.get("mac"), f"{it}.mac", ctx["macs"]) if "mac" in item else None
    if "bridge" in item:
        bridge = p.match(item["bridge"], f"{it}.bridge", IFACE, "bridge name")
        bridges = _plain_bridges(p, bridge, f"{it}.bridge", pair, ctx)
        return {"index": None, "vlan": None, "bridge": bridge, "mac": mac, "bridges": bridges}
    vlan = _vlan_id(p, item.get("vlan"), f"{it}.vlan") if "vlan" in item else None
    bridges = _vlan_bridges(p, vlan, f"{it}.vlan", pair, ctx)
    return {"index": None, "vlan": vlan, "bridge": None, "mac": mac, "bridges": bridges}


def _interfaces(p, raw, path, pair, ctx):
    ipath = f"{path}.interfaces"
    items = p.items(raw.get("interfaces", []), ipath, 0, 32)
    out = []
    for index, item in enumerate(items or []):
        it = f"{ipath}[{index}]"
        if p.mapping(item, it) is not None:
            out.append({**_interface(p, item, it, pair, ctx), "index": index})
    return out


# --- provisioning (salt-run xencluster.provision) --------------------------------------------


def _ip(value):
    """An ip_address from a string without a prefix or scope, or None."""
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _host_name(value):
    """RFC 1123, and not all digits at the end (that reads as a mistyped IP address)."""
    return HOSTNAME.ok(value) and not value.rsplit(".", 1)[-1].isdigit()


def _image(p, value, path):
    if IMAGE.ok(value) and ".." not in value.split("/"):
        return value
    p.add(path, f"invalid image path {_show(value)} ({IMAGE.text})")
    return None


def _url_host_ok(url):
    """The host of a URL that matched MIRROR is a host name or an IP address ([IPv6]), its port 1-65535."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a port above 65535, an IPv4 address in brackets
        return False
    host = parts.hostname or ""
    if "[" in parts.netloc:
        ok = isinstance(_ip(host), ipaddress.IPv6Address)
    else:
        ok = _host_name(host) or isinstance(_ip(host), ipaddress.IPv4Address)
    return ok and port != 0


def _mirror(p, value, path):
    if isinstance(value, str) and len(value) <= MAX_URL and MIRROR.ok(value) and _url_host_ok(value):
        return value
    p.add(path, f"invalid mirror URL {_show(value)} ({MIRROR.text}; at most {MAX_URL} characters)")
    return None


def _packages(p, value, path):
    items = p.items(value, path, 0, MAX_PACKAGES)
    out = []
    for index, name in enumerate(items or []):
        if not PACKAGE.ok(name):
            p.add(f"{path}[{index}]", f"invalid package name {_show(name)} ({PACKAGE.text})")
        elif name in out:
            p.add(f"{path}[{index}]", f"{name} is listed twice")
        else:
            out.append(name)
    return out


def _debootstrap(p, raw, path):
    if p.mapping(raw, path) is None:
        return None
    p.keys(raw, path, DEBOOTSTRAP_KEYS, ("suite",))
    return {
        "suite": p.match(raw["suite"], f"{path}.suite", NAME, "suite") if "suite" in raw else None,
        "mirror": _mirror(p, raw.get("mirror", DEFAULT_MIRROR), f"{path}.mirror"),
        "variant": p.choice(raw.get("variant", "minbase"), f"{path}.variant", VARIANTS),
        "include": _packages(p, raw.get("include", []), f"{path}.include"),
    }


def _source(p, spec, path):
    """Where the root filesystem comes from: ``image`` (a tar on the dom0) or ``debootstrap``."""
    if "image" in spec and "debootstrap" in spec:
        p.add(path, "takes image or debootstrap, not both")
    elif "image" not in spec and "debootstrap" not in spec:
        p.add(path, "needs image (a tar of a root filesystem on the dom0) or debootstrap")
    return {
        "source": "image" if "image" in spec else "debootstrap" if "debootstrap" in spec else None,
        "image": _image(p, spec["image"], f"{path}.image") if "image" in spec else None,
        "debootstrap": _debootstrap(p, spec["debootstrap"], f"{path}.debootstrap") if "debootstrap" in spec else None,
    }


def _gateway(p, value, path, address):
    ip = _ip(value)
    if ip is None or ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        p.add(path, f"invalid gateway {_show(value)} (a unicast IP address without a prefix, e.g. 10.99.0.1)")
        return None
    if address is None:
        return str(ip)
    if ip.version != address.version:
        p.add(path, f"{ip} is IPv{ip.version} but the address {address} is IPv{address.version}")
    elif ip == address.ip:
        p.add(path, f"{ip} is the guest's own address")
    elif ip.version == 4 and address.network.prefixlen < 31 and ip not in address.network:
        p.add(path, f"{ip} is not in {address.network}: the guest reaches its gateway on its own subnet")
    return str(ip)


def _dns(p, value, path):
    items = p.items(value, path, 1, MAX_DNS)
    out = []
    for index, item in enumerate(items or []):
        ip = _ip(item)
        if ip is None or ip.is_multicast or ip.is_unspecified:
            p.add(f"{path}[{index}]", f"invalid DNS server {_show(item)} (a unicast IP address)")
        elif str(ip) in out:
            p.add(f"{path}[{index}]", f"{ip} is listed twice")
        else:
            out.append(str(ip))
    return out


def _network(p, spec, path, has_interface):
    """address/gateway/dns of interfaces[0]; no address: DHCP."""
    address = _address(p, spec["address"], f"{path}.address", "a guest address") if "address" in spec else None
    gateway = None
    if "gateway" in spec:
        gateway = _gateway(p, spec["gateway"], f"{path}.gateway", address)
        if "address" not in spec:
            p.add(f"{path}.gateway", "only with address (a DHCP guest learns its gateway)")
    for key in ("address", "gateway", "dns") if not has_interface else ():
        if key in spec:
            p.add(f"{path}.{key}", "needs an interface: it configures the guest's interfaces[0]")
    return {
        "address": address.with_prefixlen if address else None,
        "gateway": gateway,
        "dns": _dns(p, spec["dns"], f"{path}.dns") if "dns" in spec else [],
    }


def _master(p, value, path, has_interface):
    if not has_interface:
        p.add(path, "the guest reaches its master over the network: give it an interface")
    ip = _ip(value)
    if ip is not None and (ip.is_multicast or ip.is_unspecified or ip.is_loopback):
        p.add(path, f"{ip} cannot be the salt master (multicast, unspecified or the guest's own loopback)")
        return None
    if ip is not None:
        return str(ip)
    if isinstance(value, str) and _host_name(value):
        return value
    p.add(path, f"invalid master {_show(value)} (an IP address or an RFC 1123 host name)")
    return None


def _check_provisionable(p, raw, path, guest):
    """Provisioning writes a bare root filesystem on md RAID1 and boots it with a dom0 kernel and ramdisk."""
    if guest["type"] == "hvm":
        p.add(f"{path}.type", "hvm cannot be provisioned: an hvm guest boots a boot loader from its disk, which "
              "provisioning does not install (it boots pv and pvh guests with a dom0 kernel and ramdisk)")
    elif guest["type"] is not None:
        if "bootloader" in raw:
            p.add(f"{path}.bootloader", "a provisioned guest boots a dom0 kernel and ramdisk, not a boot loader: "
                  "provisioning installs no boot loader or kernel in the guest for pygrub to find")
        for key in ("kernel", "ramdisk") if "bootloader" not in raw else ():
            if key not in raw:
                p.add(f"{path}.{key}", "is required to provision: the guest boots a dom0 kernel whose ramdisk "
                      "assembles the md RAID1 root")
    root = guest["disks"][0] if guest["disks"] else None
    if root is not None and root["filesystem"] is not None and root["filesystem"] not in ROOT_FILESYSTEMS:
        p.add(f"{root['_path']}.filesystem", f"a provisioned guest's first disk is its root: its filesystem must "
              f"be one of {', '.join(ROOT_FILESYSTEMS)}, not {root['filesystem']}")


def _provision(p, raw, path, guest):
    """The guest's ``provision`` (None without it): how ``salt-run xencluster.provision`` installs it."""
    if raw.get("provision") is None:
        return None
    ppath = f"{path}.provision"
    spec = p.mapping(raw["provision"], ppath)
    if spec is None:
        return None
    p.keys(spec, ppath, PROVISION_KEYS, ("master",))
    has_interface = isinstance(raw.get("interfaces"), list) and bool(raw["interfaces"])
    out = {
        **_source(p, spec, ppath),
        **_network(p, spec, ppath, has_interface),
        "master": _master(p, spec["master"], f"{ppath}.master", has_interface) if "master" in spec else None,
        "highstate": p.boolean(spec.get("highstate", True), f"{ppath}.highstate"),
        "final_backup": p.boolean(spec.get("final_backup", False), f"{ppath}.final_backup"),
    }
    if out["final_backup"] and guest["backup"] is None:
        p.add(f"{ppath}.final_backup", "true needs a backup target for the guest (its backup:, or backup.default)")
    _check_provisionable(p, raw, path, guest)
    return out


def _guest(p, name, raw, path, ctx):
    _guest_name(p, name, path)
    if p.mapping(raw, path) is None:
        return None
    p.keys(raw, path, GUEST_KEYS, ("memory", "disks"))
    gtype = p.choice(raw.get("type", "pvh"), f"{path}.type", TYPES)
    vcpus = p.integer(raw.get("vcpus", 1), f"{path}.vcpus", 1, 128)
    guest = {
        "name": name, "type": gtype,
        "node": _home(p, raw, path, ctx["nodes"]),
        "nodes": _pair(p, raw["nodes"], f"{path}.nodes", ctx["nodes"]) if "nodes" in raw else None,
        "vg": p.match(raw["vg"], f"{path}.vg", VG, "VG name") if "vg" in raw else None,
        "_given": {"vg": "vg" in raw, "nodes": "nodes" in raw},
        "memory": _memory(p, raw.get("memory"), f"{path}.memory") if "memory" in raw else None,
        "vcpus": vcpus, "sched": _sched(p, raw.get("sched"), f"{path}.sched", vcpus),
        **_boot(p, raw, path, gtype),
        "backup": _guest_backup(p, raw, path, ctx["backup"]),
    }  # fmt: skip
    guest["disks"] = _disks(p, raw, path, guest, ctx)
    guest["nodes"] = _check_pair(p, guest, path)
    guest["interfaces"] = _interfaces(p, raw, path, guest["nodes"], ctx)
    guest["provision"] = _provision(p, raw, path, guest)
    guest["targets"] = sorted(leg["target"] for disk in guest["disks"] for leg in disk["legs"])
    for disk in guest["disks"]:
        disk["backup"] = bool(disk["backup"] and guest["backup"])
        del disk["_path"]
    del guest["vg"], guest["_given"]
    return guest


def _home(p, raw, path, nodes):
    if "node" not in raw:
        return None
    if isinstance(raw["node"], str) and raw["node"] in nodes:
        return raw["node"]
    p.add(f"{path}.node", f"unknown node {_show(raw['node'])}")
    return None


def _shared_san(a, b):
    """a's SAN entries in a subnet that b has an address in (reachable without routing)."""
    return [
        entry for entry in a["san"] or []
        if any(ipaddress.ip_address(other["ip"]) in ipaddress.ip_network(entry["network"])
               for other in b["san"] or [])
    ]  # fmt: skip


def _check_pairs(p, ctx):
    for (a, b), path in ctx["pairs"].values():
        na, nb = ctx["nodes"][a], ctx["nodes"][b]
        if na["san"] and nb["san"] and not _shared_san(na, nb):
            p.add(path, f"{a} and {b} share no SAN subnet; the legs cannot be exported between them")


def _by_name(raw):
    """A mapping in name order: problems read the same however the pillar was merged."""
    return dict(sorted(raw.items(), key=lambda item: str(item[0]))) if isinstance(raw, dict) else raw


def _guests(p, raw, ctx):
    guests = {}
    for name, spec, path in _named(p, _by_name(raw), f"{ROOT}.guests", "guest"):
        guest = _guest(p, name, spec, path, ctx)
        if guest is not None:
            guests[name] = guest
    _check_pairs(p, ctx)
    return guests


# --- the whole model ----------------------------------------------------------------------------


def _model(model):
    if model is None:
        model = __pillar__.get(ROOT)  # pylint: disable=undefined-variable
        if model is None:
            raise SaltInvocationError(f"{ROOT}: missing from the pillar (see pillar/xencluster/*.sls)")
    return model


def _normalise(model):
    """(normalised model with secrets in clear, [problem lines]). Pure."""
    p = _Problems()
    if p.mapping(model, ROOT) is None:
        return None, p.lines
    p.keys(model, ROOT, TOP_KEYS, ("cluster", "nodes"))
    cluster = _cluster(p, model.get("cluster"))
    nodes = _nodes(p, model.get("nodes"), cluster) if "nodes" in model else {}
    backup = _backup(p, model.get("backup"), nodes)
    ctx = {"cluster": cluster, "nodes": nodes, "backup": backup, "macs": {}, "pairs": {}}
    guests = _guests(p, model.get("guests") or {}, ctx)
    return {"cluster": cluster, "nodes": nodes, "guests": guests, "backup": backup}, p.lines


def _checked(model):
    """The normalised model (secrets in clear: never return it), or SaltInvocationError with every problem."""
    normalised, problems = _normalise(_model(model))
    if problems:
        log.debug("xencluster_model: %d problem(s) in the cluster model", len(problems))
        raise SaltInvocationError("\n".join(problems))
    return normalised


def redact(data):
    """
    A deep copy of ``data`` with every CHAP secret or password replaced by ``********``.

    A value is hidden when its key contains ``password``, ``passwd`` or
    ``secret`` (any case) and it is set; everything else is copied as is.

    CLI Example:

    .. code-block:: bash

        salt-call xencluster_model.redact '{"chap": {"userid": "xc", "password": "s3cret-s3cret"}}'
    """
    if isinstance(data, dict):
        return {key: _redact_item(key, value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(value) for value in data]
    return copy.deepcopy(data)


_SECRET_KEY = re.compile(r"password|passwd|secret", re.IGNORECASE)


def _redact_item(key, value):
    if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    return redact(value)


def validate(model=None):
    """
    Check the whole cluster model and return it normalised (secrets redacted).

    ``model`` defaults to ``pillar["xencluster"]``. On any problem raises
    ``SaltInvocationError`` listing EVERY problem found, one per line, each
    starting with its dotted key path (e.g.
    ``xencluster.guests.web1.disks.data.nodes: both legs on node1``).

    Normalised: sizes in bytes, ``memory`` in MiB, defaults filled, VLAN ids
    as ints, MACs in lower case, each node's SAN entries with ``ip``,
    ``network`` and ``portal``, each guest's ``nodes`` (its pair),
    ``targets`` and ``disks`` (ordered, with ``index``, ``vdev`` and
    ``legs``: ``{"node", "vg", "lv" (leg id), "path", "device", "size",
    "stripes", "stripe_size", "backstore", "serial", "target", "lun"}``), its
    ``interfaces`` (``{"index", "vlan", "bridge", "mac", "bridges"}``: ``vlan``
    (int) and ``bridge`` None, or ``vlan`` None and ``bridge`` the plain dom0
    bridge; ``bridges`` is {node: bridge} on each node of the pair) and its
    ``provision``: None, or ``{"source": "image"|"debootstrap", "image",
    "debootstrap": {"suite", "mirror", "variant", "include"} or None,
    "address" ("ip/prefix") or None, "gateway" or None, "dns": [...],
    "master", "highstate", "final_backup"}``. The module docstring documents
    the schema.

    CLI Example:

    .. code-block:: bash

        salt-call xencluster_model.validate
        salt-run salt.cmd xencluster_model.validate
    """
    return redact(_checked(model))


def _find_node(full, node):
    if node in full["nodes"]:
        return node
    for name, spec in full["nodes"].items():
        if spec["minion"] == node:
            return name
    raise SaltInvocationError(f"{ROOT}.nodes: no node or minion id {_show(node)}")


def _credentials(full, node):
    return full["nodes"][node]["chap"] or full["cluster"]["chap"]


def _legs_of(full, name):
    """(guest, disk, leg, other node) for every leg of a disk whose pair includes ``name``."""
    for guest in full["guests"].values():
        for disk in guest["disks"]:
            if name in disk["nodes"]:
                for leg in disk["legs"]:
                    partner = next(n for n in disk["nodes"] if n != leg["node"])
                    yield guest, disk, leg, partner


def _owned(full, name):
    me, out = full["nodes"][name], []
    for guest, disk, leg, partner in _legs_of(full, name):
        if leg["node"] != name:
            continue
        other = full["nodes"][partner]
        out.append({
            **leg, "guest": guest["name"], "disk": disk["name"], "partner": partner,
            "initiator": other["initiator"],
            "portals": [e["portal"] for e in _shared_san(me, other)],
            "partner_addresses": [e["ip"] for e in _shared_san(other, me)],
            "chap": _credentials(full, partner),
        })  # fmt: skip
    return sorted(out, key=lambda leg: leg["lv"])


def _imported(full, name):
    me, out = full["nodes"][name], []
    for guest, disk, leg, _partner in _legs_of(full, name):
        if leg["node"] == name:
            continue
        owner = full["nodes"][leg["node"]]
        out.append({
            "guest": guest["name"], "disk": disk["name"], "owner": leg["node"], "lv": leg["lv"],
            "path": leg["path"], "size": leg["size"], "serial": leg["serial"],
            "target": leg["target"], "lun": leg["lun"],
            "portals": [e["portal"] for e in _shared_san(owner, me)],
            "replacement_timeout": full["cluster"]["replacement_timeout"],
            "chap": _credentials(full, name),
        })  # fmt: skip
    return sorted(out, key=lambda leg: leg["lv"])


def _peers(full, name):
    me, peers = full["nodes"][name], {}
    for _guest, _disk, leg, partner in _legs_of(full, name):
        other = leg["node"] if leg["node"] != name else partner
        spec = full["nodes"][other]
        peers[other] = {
            "minion": spec["minion"], "initiator": spec["initiator"],
            "portals": [e["portal"] for e in _shared_san(spec, me)],
        }  # fmt: skip
    return dict(sorted(peers.items()))


def _runnable(full, name):
    guests = {}
    for gname, guest in full["guests"].items():
        if name in (guest["nodes"] or []):
            view = copy.deepcopy(guest)
            view["home"] = guest["node"] == name
            view["partner"] = next(n for n in guest["nodes"] if n != name)
            view["interfaces"] = [
                {"index": i["index"], "vlan": i["vlan"], "mac": i["mac"], "bridge": i["bridges"][name]}
                for i in guest["interfaces"]
            ]
            guests[gname] = view
    return guests


def node_view(node, model=None):
    """
    The part of the cluster model one dom0 needs: plain data, no side effect.

    ``node`` is a node name or its minion id; ``model`` defaults to
    ``pillar["xencluster"]`` and is validated first (any problem raises, as
    ``validate``). Returns ``{"node", "minion", "initiator", "chap", "cluster",
    "vgs", "network": {"mgmt_interface", "san", "bonds", "vlans"}, "owned":
    [legs it creates and exports, each with its "partner", the allowed
    "initiator" (the partner's IQN), the "portals" to bind and the
    "partner_addresses"], "imported": [legs of its partners it logs in to:
    "owner", "target", "lun", "serial", "portals", "path"], "peers": {node: {minion,
    initiator, portals}}, "guests": {name: guest it may run, with "home",
    "partner", "provision" and each interface's "bridge" on this node:
    ``{"index", "vlan", "mac", "bridge"}``}, "backup":
    {"targets" on this node, "retention"}}``. CHAP secrets are redacted:
    the states read them from pillar themselves.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_model.node_view node1
    """
    full = _checked(model)
    name = _find_node(full, node)
    spec = full["nodes"][name]
    view = {
        "node": name, "minion": spec["minion"], "initiator": spec["initiator"],
        "chap": _credentials(full, name), "cluster": full["cluster"], "vgs": spec["vgs"],
        "network": {key: spec[key] for key in ("mgmt_interface", "san", "bonds", "vlans")},
        "owned": _owned(full, name), "imported": _imported(full, name),
        "peers": _peers(full, name), "guests": _runnable(full, name),
        "backup": {
            "targets": {t: s for t, s in full["backup"]["targets"].items() if s["node"] == name},
            "retention": full["backup"]["retention"],
        },
    }  # fmt: skip
    return redact(view)
