"""
dom0 networking of xencluster nodes, rendered as systemd-networkd files.

Pure: ``render`` turns ``xencluster_model.node_view(node)["network"]`` into
the text of ``.netdev`` and ``.network`` files; ``plan`` compares them with
what is on disk. No command runs here and nothing on the host is changed
(the ``xencluster_net.managed`` state writes the files and runs ``networkctl
reload``).

What is rendered, per node of the model:

* every bond: ``<bond>.netdev`` (``Kind=bond``, ``Mode``, ``MIIMonitorSec``;
  802.3ad: ``LACPTransmitRate``, ``TransmitHashPolicy``; active-backup with
  a primary: ``PrimaryReselectPolicy=always``) and one ``.network`` per link
  (``Bond=``, ``PrimarySlave=yes`` on the primary, the bond's MTU);
* every service VLAN: a VLAN device ``<parent>.<id>`` (``vlan<id>`` when that
  would exceed 15 characters), listed with ``VLAN=`` in its parent's
  ``.network``, and enslaved with ``Bridge=`` to the VLAN's bridge
  (``Kind=bridge``), the bridge guest vifs are plugged into;
* the SAN interfaces: their addresses (no gateway, no DHCP), on a link or a
  bond that carries no service VLAN (``xencluster_model.validate`` checks it).

Every interface has ``LinkLocalAddressing=no`` and ``IPv6AcceptRA=no``
(``ipv6`` link-local addressing on a SAN interface with an IPv6 address), so
nothing but the model's addresses appears. All files are named
``/etc/systemd/network/40-xencluster-<interface>.{netdev,network}``: the
prefix never collides with other files, and ``plan`` only ever proposes to
remove files with that prefix (so do not name your own files like that).
systemd-networkd applies only the FIRST ``.network`` file (in file name order,
across /etc, /run and /usr/lib) matching an interface: ``plan`` reports a file
of ours shadowed by an earlier one in /etc or /run that matches the same
interface by name (``shadowed``); files matching by MAC address (as the QEMU
lab's ``20-lab-san-*``) cannot be judged without the hardware.

The management link is protected: ``plan`` sets ``touches_mgmt`` when a file
it would write or remove concerns the node's ``mgmt_interface``, an
interface it depends on (its VLAN parent, its bond's links, its bridge's
VLAN device) or one of its current addresses (from the ``ip4_interfaces`` /
``ip6_interfaces`` grains). A node without ``mgmt_interface`` in the model
has every change treated as touching management.

Only systemd-networkd is rendered. ifupdown (``/etc/network/interfaces``) is
not supported: ``render`` and ``plan`` refuse any other ``backend`` with an
error rather than render half a network. Open vSwitch is not supported either
(Salt 3008 ships no openvswitch states; the model has no OVS option).
Interfaces the model does not name (the management link, usually) are never
rendered; a host whose management link stays with ifupdown must check that
systemd-networkd leaves it alone (``ManageForeignRoutes=`` and
``ManageForeignRoutingPolicyRules=`` in networkd.conf) before enabling it.
"""

import fnmatch
import ipaddress
import logging
import os
import re

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_net"

# Module-level so that tests can point it into a temporary directory.
NETWORK_DIR = "/etc/systemd/network"
RUN_DIR = "/run/systemd/network"  # systemd-network-generator's files (kernel command line)
PREFIX = "40-xencluster-"
SUFFIXES = (".netdev", ".network")
BACKENDS = ("networkd",)
IFNAMSIZ = 15
HEADER = (
    "# Managed by Salt (xencluster_net, from the xencluster pillar model): edits are overwritten.\n"
)

# What a rendered interface name may be: the model's interface names plus "<parent>.<vlan>".
_IFACE_RE = re.compile(r"[a-z][a-z0-9_-]{0,14}(?:\.[0-9]{1,4})?")
_OURS_RE = re.compile(re.escape(PREFIX) + r"[a-z][a-z0-9_.-]{0,20}\.(?:netdev|network)")
_BACKEND_NAMES = {"networkd": "networkd", "systemd-networkd": "networkd"}
# Keys of a .network/.netdev file that name an interface.
_NAME_KEYS = ("Name", "Bond", "Bridge", "VLAN")


def __virtual__():
    return __virtualname__


# --- rendering (pure) ------------------------------------------------------------


def _backend(backend):
    name = _BACKEND_NAMES.get(backend) if isinstance(backend, str) else None
    if name is None:
        raise SaltInvocationError(
            f"xencluster_net: backend {backend!r} is not supported: xencluster renders "
            "systemd-networkd files only (/etc/systemd/network). ifupdown "
            "(/etc/network/interfaces) and Open vSwitch are not supported; see README.md, "
            "'dom0 formula'."
        )
    return name


def _view(node, model):
    node = node if node is not None else __grains__["id"]  # pylint: disable=undefined-variable
    if model is None:
        return __salt__["xencluster_model.node_view"](node)  # pylint: disable=undefined-variable
    return __salt__["xencluster_model.node_view"](node, model=model)  # pylint: disable=undefined-variable


def _vlan_name(parent, vid):
    name = f"{parent}.{vid}"
    return name if len(name) <= IFNAMSIZ else f"vlan{vid}"


def _section(name, lines):
    return [f"[{name}]", *lines, ""]


def _text(sections):
    return HEADER + "\n" + "\n".join(line for section in sections for line in section)


def _ll(addresses):
    """LinkLocalAddressing: none, unless an IPv6 address needs IPv6 on the link."""
    v6 = any(ipaddress.ip_interface(a).version == 6 for a in addresses)
    return "ipv6" if v6 else "no"


def _netdev_bond(name, bond):
    lines = [f"Mode={bond['mode']}", f"MIIMonitorSec={bond['miimon']}ms"]
    if bond["mode"] == "802.3ad":
        lines += [f"LACPTransmitRate={bond['lacp_rate']}", f"TransmitHashPolicy={bond['xmit_hash_policy']}"]
    elif bond["primary"]:
        lines.append("PrimaryReselectPolicy=always")
    return _text([_section("NetDev", [f"Name={name}", "Kind=bond"]), _section("Bond", lines)])


def _netdev_vlan(name, vid):
    return _text([_section("NetDev", [f"Name={name}", "Kind=vlan"]), _section("VLAN", [f"Id={vid}"])])


def _netdev_bridge(name):
    # No STP (networkd's default, said explicitly): guest vifs and one uplink, no loops.
    return _text([_section("NetDev", [f"Name={name}", "Kind=bridge"]), _section("Bridge", ["STP=no"])])


def _network(name, link):
    sections = [_section("Match", [f"Name={name}"])]
    if link["mtu"]:
        sections.append(_section("Link", [f"MTUBytes={link['mtu']}"]))
    lines = []
    if link["bond"]:
        lines.append(f"Bond={link['bond']}")
        if link["primary"]:
            lines.append("PrimarySlave=yes")
    if link["bridge"]:
        lines.append(f"Bridge={link['bridge']}")
    lines += [f"VLAN={vlan}" for vlan in link["vlans"]]
    lines += [f"Address={address}" for address in link["addresses"]]
    lines += [f"LinkLocalAddressing={_ll(link['addresses'])}", "IPv6AcceptRA=no"]
    if link["carrierless"]:
        lines.append("ConfigureWithoutCarrier=yes")
    sections.append(_section("Network", lines))
    return _text(sections)


def _links(net):
    """({interface: its .network spec}, {interface: .netdev text}, {interface: role}) of a node."""
    links, netdevs, roles = {}, {}, {}

    def link(name, role):
        if not _IFACE_RE.fullmatch(name):
            raise SaltInvocationError(f"xencluster_net: refusing to render interface name {name!r}")
        if name in roles and role in ("bond", "vlan", "bridge") and roles[name] != role:
            raise SaltInvocationError(
                f"xencluster_net: {name} would be both a {roles[name]} and a {role}; rename one of them"
            )
        roles.setdefault(name, role)
        return links.setdefault(name, {
            "bond": None, "primary": False, "bridge": None, "vlans": [], "addresses": [],
            "mtu": None, "carrierless": False,
        })  # fmt: skip

    for name, bond in sorted((net.get("bonds") or {}).items()):
        link(name, "bond")["mtu"] = bond["mtu"]
        netdevs[name] = _netdev_bond(name, bond)
        for member in bond["links"]:
            spec = link(member, "bond link")
            spec.update(bond=name, primary=member == bond["primary"], mtu=bond["mtu"])
    for vid, vlan in sorted((int(k), v) for k, v in (net.get("vlans") or {}).items()):
        device = _vlan_name(vlan["parent"], vid)
        if device in roles:
            raise SaltInvocationError(
                f"xencluster_net: the device of VLAN {vid} would be named {device}, which is already "
                f"a {roles[device]} of this node; rename it"
            )
        link(vlan["parent"], "link")["vlans"].append(device)
        link(device, "vlan")["bridge"] = vlan["bridge"]
        netdevs[device] = _netdev_vlan(device, vid)
        link(vlan["bridge"], "bridge")["carrierless"] = True
        netdevs[vlan["bridge"]] = _netdev_bridge(vlan["bridge"])
    for entry in net.get("san") or []:
        link(entry["interface"], "link")["addresses"].append(entry["address"])
    return links, netdevs, roles


def _render(net):
    links, netdevs, _roles = _links(net)
    files = {}
    for name, text in netdevs.items():
        files[os.path.join(NETWORK_DIR, f"{PREFIX}{name}.netdev")] = text
    for name, spec in links.items():
        files[os.path.join(NETWORK_DIR, f"{PREFIX}{name}.network")] = _network(name, spec)
    return dict(sorted(files.items()))


def render(node=None, backend="networkd", model=None):
    """
    The systemd-networkd files of a node's bonds, VLANs, bridges and SAN interfaces; pure.

    ``node`` is a node name or minion id (default: this minion's id);
    ``model`` defaults to ``pillar["xencluster"]`` and is validated first
    (``xencluster_model.node_view``: any problem raises, one line per
    problem). Returns ``{path: content}`` with every path
    ``/etc/systemd/network/40-xencluster-<interface>.netdev|.network``.
    ``backend`` must be ``networkd``: ifupdown is not supported and raises
    ``SaltInvocationError``. No command runs and no file is read.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_net.render
        salt-call xencluster_net.render node2
    """
    _backend(backend)
    return _render(_view(node, model)["network"])


# --- the plan: the rendered files against the disk (reads only) ------------------


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}")


def _ours_on_disk():
    """{path: content} of every 40-xencluster-* file in NETWORK_DIR."""
    try:
        names = sorted(os.listdir(NETWORK_DIR))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CommandExecutionError(f"cannot list {NETWORK_DIR}: {exc}")
    found = {}
    for name in names:
        path = os.path.join(NETWORK_DIR, name)
        if _OURS_RE.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            found[path] = _read(path)
    return found


def _parse(text):
    """[(section, key, value)] of a systemd unit-style file; comments and blanks skipped."""
    out, section = [], None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, value = line.split("=", 1)
            out.append((section, key.strip(), value.strip()))
    return out


def _names_and_ips(text):
    """(interface names, IP addresses) a file mentions: Name/Bond/Bridge/VLAN and Address."""
    names, ips = set(), set()
    for _section_name, key, value in _parse(text):
        if key in _NAME_KEYS:
            names.update(value.split())
        elif key == "Address":
            try:
                ips.add(str(ipaddress.ip_interface(value).ip))
            except ValueError:
                pass
    return names, ips


def _mgmt_names(net):
    """The management interface and every interface it depends on (fixed point)."""
    mgmt = net.get("mgmt_interface")
    if not mgmt:
        return set()
    bonds = net.get("bonds") or {}
    vlans = {}
    for vid, vlan in (net.get("vlans") or {}).items():
        vlans[_vlan_name(vlan["parent"], int(vid))] = vlan
    bridges = {vlan["bridge"]: device for device, vlan in vlans.items()}
    names, todo = set(), [mgmt]
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.add(name)
        if "." in name:  # a VLAN on <parent>
            todo.append(name.split(".", 1)[0])
        if name in bonds:
            todo.extend(bonds[name]["links"])
        if name in vlans:
            todo.append(vlans[name]["parent"])
        if name in bridges:
            todo.append(bridges[name])
    return names


def _mgmt_ips(names):
    ips = set()
    for grain in ("ip4_interfaces", "ip6_interfaces"):
        table = __grains__.get(grain) or {}  # pylint: disable=undefined-variable
        for name in names:
            for ip in table.get(name) or []:
                try:
                    address = ipaddress.ip_address(ip.split("%", 1)[0])
                except ValueError:
                    continue
                if not address.is_link_local:
                    ips.add(str(address))
    return ips


def _match_names(text):
    """The Name= patterns of a .network file's [Match] section."""
    return [p for section, key, value in _parse(text) if section == "Match" and key == "Name" for p in value.split()]


def _shadowed(wanted):
    """{our .network path: an earlier .network (/etc or /run) matching the same interface by name}."""
    others = []
    for directory in (NETWORK_DIR, RUN_DIR):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        others += [(n, os.path.join(directory, n)) for n in names if n.endswith(".network") and not n.startswith(PREFIX)]
    others.sort()
    out = {}
    for path in wanted:
        if not path.endswith(".network"):
            continue
        ours = os.path.basename(path)
        iface = ours[len(PREFIX) : -len(".network")]
        for name, other in others:
            if name >= ours:
                break
            patterns = _match_names(_read(other))
            if any(fnmatch.fnmatchcase(iface, p) for p in patterns):
                out[path] = other
                break
    return out


def plan(node=None, backend="networkd", model=None):
    """
    What ``xencluster_net.managed`` would change: the rendered files against the disk; reads only.

    Returns ``{"write": {path: content} (new or different), "remove": [stale
    40-xencluster-* files the model no longer wants], "unchanged": [paths],
    "touches_mgmt": bool, "touching": [paths that touch management], "mgmt":
    {"interface", "names", "addresses"}, "shadowed": {our path: earlier file
    matching the same interface}, "netdev_changed": [existing .netdev files
    that change], "dir", "prefix"}``. ``touches_mgmt`` is true when a file to
    write or remove names the management interface or an interface it
    depends on, or one of its addresses; always true (on any change) when
    the model has no ``mgmt_interface``. Nothing but files under
    ``/etc/systemd/network`` and the minion's grains is read; no command runs.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_net.plan
    """
    _backend(backend)
    net = _view(node, model)["network"]
    wanted = _render(net)
    existing = _ours_on_disk()
    write = {p: c for p, c in wanted.items() if existing.get(p) != c}
    unchanged = sorted(p for p, c in wanted.items() if existing.get(p) == c)
    remove = sorted(p for p in existing if p not in wanted)

    names = _mgmt_names(net)
    ips = _mgmt_ips(names)
    touching = []
    for path in sorted([*write, *remove]):
        mentioned, addresses = _names_and_ips(wanted.get(path))
        old_names, old_ips = _names_and_ips(existing.get(path))
        if not names or (mentioned | old_names) & names or (addresses | old_ips) & ips:
            touching.append(path)
    return {
        "write": write,
        "remove": remove,
        "unchanged": unchanged,
        "touches_mgmt": bool(touching),
        "touching": touching,
        "mgmt": {"interface": net.get("mgmt_interface"), "names": sorted(names), "addresses": sorted(ips)},
        "shadowed": _shadowed(wanted),
        "netdev_changed": sorted(p for p in write if p.endswith(".netdev") and p in existing),
        "dir": NETWORK_DIR,
        "prefix": PREFIX,
    }
