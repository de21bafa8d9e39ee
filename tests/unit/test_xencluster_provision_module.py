"""xencluster_provision execution module: names and identities, the plan, install's commands, files, the key.

The guest is web1 of the frozen lab model (``tests/unit/data/two_node_model.sls``)
as ``xencluster_model.node_view`` gives it to node1 (disks root ext4 and data
xfs, one interface), plus a ``provision`` dict written here in the shape the
model normalises it to (SYNTHETIC; the validator is not used). Every command
goes through a fake ``cmd.run_all`` (``Host``) that records its argv and keeps
what the commands would have changed: the /dev paths that exist, the
filesystems blkid finds, the mounts. ``os.path.exists`` answers from it for
/dev paths and ``os.path.ismount`` for the mount base (a tmp dir), so nothing
touches the real /dev or mounts anything. Files are really written, into tmp
directories.
"""

import base64
import copy
import json
import os
import pathlib
import uuid

import pytest
import salt.crypt
import salt.utils.yaml
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_provision as prov
from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
RAW = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())["xencluster"]
VIEW = model_mod.node_view("node1", model=copy.deepcopy(RAW))
CLUSTER = "lab"
ROOT_UUID = "2f83b615:79005887:a5f82e5e:2e2b475c"  # mdadm_uuid(array_uuid("lab", "web1", "root")), pinned
DATA_UUID = "11352b71:8a245c00:be1f59b7:4bb1c78d"
ROOT_FS = "636e1731-cab6-5bab-8bd4-bd26c8cdf7c7"
DATA_FS = "515e2ad8-48ed-5c60-b570-97dcf94142e6"
ROOT_MD, DATA_MD = "/dev/md/xcp-8a809a65491e", "/dev/md/xcp-fcaa2c936cb5"
LEGS = {
    "root": ["/dev/xencluster/web1.root.node1", "/dev/xencluster/web1.root.node2"],
    "data": ["/dev/xencluster/web1.data.node1", "/dev/xencluster/web1.data.node2"],
}
ALL_LEGS = LEGS["root"] + LEGS["data"]
IMAGE_PROV = {"source": "image", "image": None, "debootstrap": None, "address": "10.99.0.12/24",
              "gateway": "10.99.0.1", "dns": ["10.99.0.53", "9.9.9.9"], "master": "salt.lab", "highstate": True,
              "final_backup": False}  # fmt: skip
BOOT = {"suite": "bookworm", "mirror": "http://deb.debian.org/debian", "variant": "minbase",
        "include": ["salt-minion", "mdadm"]}  # fmt: skip
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="_write_file chowns to root and checks the owner")


def spec_of(**prov_changes):
    spec = copy.deepcopy(VIEW["guests"]["web1"])
    spec["provision"] = dict(copy.deepcopy(IMAGE_PROV), **prov_changes)
    return spec


def blank_facts(spec=None):
    legs = [leg["path"] for disk in (spec or spec_of())["disks"] for leg in disk["legs"]]
    return {"domains": {}, "present": {p: True for p in legs}, "superblocks": {p: None for p in legs},
            "contents": {p: None for p in legs}, "active": {}}  # fmt: skip


# --- a fake dom0 ------------------------------------------------------------------------------------


class Host:
    """cmd.run_all and the /dev, blkid and mount state its commands change (records every argv)."""

    def __init__(self):
        self.devs = set(ALL_LEGS)
        self.superblocks = {}  # leg -> examine() dict
        self.fs = {}  # device -> (TYPE, UUID)
        self.mounted = set()
        self.domains = {}
        self.calls = []
        self.loops = {}  # /dev/loopN -> the leg it is attached to (now)
        self.attached = {}  # every loop device ever attached -> its leg
        self.fail = {}  # argv[0] -> stderr: that command fails (rc 1)
        self.on = {}  # argv[0] -> callable(argv) run after it

    def leg(self, dev):
        """The leg behind a loop device (md runs over loops), or ``dev`` itself."""
        return self.loops.get(dev, dev)

    def members(self, md):
        create = [c for c in self.calls if c[:3] in (["mdadm", "--create", md], ["mdadm", "--assemble", md])]
        return [self.leg(a) for a in create[-1][3:] if a.startswith("/dev/")]

    def argvs(self, *names):
        return [c for c in self.calls if c[0] != "udevadm" and (not names or c[0] in names)]

    def __call__(self, argv, python_shell=None, ignore_retcode=None, timeout=None):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        assert python_shell is False
        self.calls.append(list(argv))
        if argv[0] in self.fail:
            return {"retcode": 1, "stdout": "", "stderr": self.fail[argv[0]]}
        out = {"retcode": 0, "stdout": "", "stderr": ""}
        cmd = argv[0]
        if cmd == "mdadm" and argv[1] in ("--create", "--assemble"):
            self.devs.add(argv[2])
            if argv[1] == "--create":  # the legs now carry the array's superblock
                array = next(a for a in argv if a.startswith("--uuid="))[len("--uuid="):]
                self.superblocks.update({self.leg(dev): own_superblock(array) for dev in argv[-2:]})
        elif cmd == "mdadm" and argv[1] == "--manage":
            self.superblocks[self.leg(argv[-1])] = dict(self.superblocks[self.members(argv[2])[0]])
        elif cmd == "losetup" and argv[1] == "--list":
            out["stdout"] = json.dumps({"loopdevices": [{"name": n, "back-file": leg} for n, leg in self.loops.items()]})
        elif cmd == "losetup" and argv[1] == "--find":
            assert "--direct-io=on" in argv, argv
            name = f"/dev/loop{len(self.loops) + len([c for c in self.calls if c[:2] == ['losetup', '--detach']])}"
            self.loops[name] = self.attached[name] = argv[-1]
            out["stdout"] = name + "\n"
        elif cmd == "losetup" and argv[1] == "--detach":
            del self.loops[argv[2]]
        elif cmd == "mdadm" and argv[1] == "--stop":
            self.devs.discard(argv[2])
        elif cmd == "blkid":
            found = self.fs.get(argv[-1])
            if found is None:
                out["retcode"] = 2
            else:
                out["stdout"] = f"DEVNAME={argv[-1]}\nUUID={found[1]}\nBLOCK_SIZE=4096\nTYPE={found[0]}\n"
        elif cmd.startswith("mkfs.") or cmd == "mkswap":
            fstype = "swap" if cmd == "mkswap" else cmd.split(".")[1]
            fsid = argv[argv.index("-U") + 1] if "-U" in argv else argv[argv.index("-m") + 1][len("uuid="):]
            self.fs[argv[-1]] = (fstype, fsid)
        elif cmd == "wipefs":
            assert argv[:3] == ["wipefs", "--all", "--"], argv
            self.fs.pop(argv[-1], None)
        elif cmd == "mount":
            self.mounted.add(argv[-1])
        elif cmd == "umount":
            self.mounted.discard(argv[-1])
        elif cmd not in ("mdadm", "tar", "debootstrap", "udevadm", "losetup"):
            raise AssertionError(f"unexpected command: {argv}")
        if cmd in self.on:
            self.on[cmd](argv)
        return out


@pytest.fixture
def host():
    return Host()


@pytest.fixture
def pki(tmp_path):
    return {"minion": tmp_path / "pki-minion", "master": tmp_path / "pki-master"}


@pytest.fixture
def view():
    v = copy.deepcopy(VIEW)
    v["guests"]["web1"]["provision"] = copy.deepcopy(IMAGE_PROV)
    return v


@pytest.fixture
def configure_loader_modules(host, view, pki):
    salt_funcs = {
        "cmd.run_all": host,
        "xencluster_model.node_view": lambda node: copy.deepcopy(view),
        "xencluster_md.examine": lambda leg: copy.deepcopy(host.superblocks.get(leg)),
        "xencluster_xl.list_domains": lambda: copy.deepcopy(host.domains),
    }
    return {
        prov: {"__salt__": salt_funcs, "__opts__": {"id": "node1", "pki_dir": str(pki["minion"])}},
        runner: {"__opts__": {"pki_dir": str(pki["master"])}, "__context__": {}},
    }


@pytest.fixture
def dom0(monkeypatch, tmp_path, host, view):
    """The fake host behind os.path.exists (/dev) and os.path.ismount (the mount base); a golden image file."""
    real_exists, real_ismount = os.path.exists, os.path.ismount
    base = tmp_path / "run"
    monkeypatch.setattr(prov, "MOUNT_BASE", str(base))
    monkeypatch.setattr(prov.os.path, "exists",
                        lambda p: p in host.devs if str(p).startswith("/dev/") else real_exists(p))
    monkeypatch.setattr(prov.os.path, "ismount",
                        lambda p: str(p) in host.mounted if str(p).startswith(str(base)) else real_ismount(p))
    image = tmp_path / "images" / "bookworm.tar.zst"
    image.parent.mkdir()
    image.write_bytes(b"not really a tar")
    view["guests"]["web1"]["provision"]["image"] = str(image)
    return {"root": str(base / "web1"), "image": str(image)}


def own_superblock(uuid_text):
    return {"MD_LEVEL": "raid1", "MD_DEVICES": "2", "MD_UUID": uuid_text, "MD_NAME": "web1:root"}


# --- names and identities ----------------------------------------------------------------------------


def test_uuids_are_pinned_and_distinct():
    # pinned: a changed namespace or derivation would orphan every provisioned array
    assert prov.mdadm_uuid(prov.array_uuid(CLUSTER, "web1", "root")) == ROOT_UUID
    assert prov.mdadm_uuid(prov.array_uuid(CLUSTER, "web1", "data")) == DATA_UUID
    assert str(prov.fs_uuid(CLUSTER, "web1", "root")) == ROOT_FS
    assert str(prov.fs_uuid(CLUSTER, "web1", "data")) == DATA_FS
    assert prov.array_uuid(CLUSTER, "web1", "root") == prov.array_uuid("lab", "web1", "root")  # same on every call
    ids = {prov.array_uuid(c, g, d) for c in ("lab", "prod") for g in ("web1", "web2") for d in ("root", "data")}
    ids |= {prov.fs_uuid(c, g, d) for c in ("lab", "prod") for g in ("web1", "web2") for d in ("root", "data")}
    assert len(ids) == 16


def test_mdadm_uuid_notation():
    assert prov.mdadm_uuid(uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")) == "00112233:44556677:8899aabb:ccddeeff"


def test_md_device_is_short_stable_and_per_disk():
    assert (prov.md_device("web1", "root"), prov.md_device("web1", "data")) == (ROOT_MD, DATA_MD)
    long = prov.md_device("a" * 31, "b" * 31)
    assert long.startswith("/dev/md/xcp-") and len(long.rsplit("/", 1)[1]) == 16  # md names: 32 characters at most
    assert prov.md_device("web1", "root") != prov.md_device("web2", "root")


def test_fstab_root_data_swap_and_none():
    disks = [{"name": "root", "filesystem": "xfs"}, {"name": "data", "filesystem": "ext4"},
             {"name": "swap", "filesystem": "swap"}, {"name": "raw", "filesystem": "none"}]  # fmt: skip
    lines = prov.fstab(CLUSTER, "web1", disks).splitlines()
    assert lines[0].startswith("#") and len(lines) == 4
    assert lines[1] == f"UUID={prov.fs_uuid(CLUSTER, 'web1', 'root')} / xfs defaults 0 0"  # no boot-time fsck for xfs
    assert lines[2] == f"UUID={prov.fs_uuid(CLUSTER, 'web1', 'data')} /srv/data ext4 defaults,nofail 0 2"
    assert lines[3] == f"UUID={prov.fs_uuid(CLUSTER, 'web1', 'swap')} none swap sw,nofail 0 0"
    ext4_root = prov.fstab(CLUSTER, "web1", spec_of()["disks"]).splitlines()
    assert ext4_root[1:] == [f"UUID={ROOT_FS} / ext4 errors=remount-ro 0 1", f"UUID={DATA_FS} /srv/data xfs defaults,nofail 0 2"]


def test_mdadm_conf():
    text = prov.mdadm_conf(CLUSTER, "web1", spec_of()["disks"])
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "HOMEHOST <ignore>" in lines and "AUTO +1.x -all" in lines
    assert lines[-2:] == [f"ARRAY /dev/md/root metadata=1.2 UUID={ROOT_UUID}",
                          f"ARRAY /dev/md/data metadata=1.2 UUID={DATA_UUID}"]  # fmt: skip


def test_network_unit_static():
    spec = spec_of()
    lines = prov.network_unit(spec, spec["interfaces"][0]).splitlines()
    assert lines[1:] == ["[Match]", "MACAddress=00:16:3e:00:01:01", "", "[Network]", "Address=10.99.0.12/24",
                         "Gateway=10.99.0.1", "DNS=10.99.0.53", "DNS=9.9.9.9", "LinkLocalAddressing=no",
                         "IPv6AcceptRA=no"]  # fmt: skip


def test_network_unit_static_without_gateway_and_dns():
    spec = spec_of(gateway=None, dns=[])
    lines = prov.network_unit(spec, spec["interfaces"][0]).splitlines()
    assert lines[5:] == ["Address=10.99.0.12/24", "LinkLocalAddressing=no", "IPv6AcceptRA=no"]


def test_network_unit_dhcp():
    spec = spec_of(address=None, gateway=None, dns=["10.99.0.53"])
    lines = prov.network_unit(spec, spec["interfaces"][0]).splitlines()
    assert lines[5:] == ["DHCP=yes", "DNS=10.99.0.53"]
    assert not any(line.startswith(("Address=", "Gateway=", "LinkLocal")) for line in lines)


def test_identity_files():
    spec = spec_of()
    files = prov.identity_files(CLUSTER, "web1", spec)
    assert sorted(files) == ["etc/fstab", "etc/hostname", "etc/hosts", "etc/mdadm/mdadm.conf", "etc/resolv.conf",
                             "etc/salt/grains", "etc/salt/minion.d/xencluster.conf", "etc/salt/minion_id",
                             "etc/systemd/network/10-xencluster-eth0.network"]  # fmt: skip
    # the grain salt/top.sls maps to the guest baseline (xencluster.guest)
    assert json.loads(files["etc/salt/grains"][0]) == {
        "xencluster": {"role": "guest", "cluster": CLUSTER, "nodes": list(spec["nodes"])}}
    assert files["etc/hostname"] == ("web1\n", 0o644)
    assert "127.0.1.1 web1\n" in files["etc/hosts"][0]
    assert files["etc/salt/minion_id"] == ("web1\n", 0o644)
    assert "id: web1\nmaster: salt.lab\n" in files["etc/salt/minion.d/xencluster.conf"][0]
    assert files["etc/resolv.conf"] == ("nameserver 10.99.0.53\nnameserver 9.9.9.9\n", 0o644)
    assert files["etc/fstab"][0] == prov.fstab(CLUSTER, "web1", spec["disks"])
    assert all(mode == 0o644 for _c, mode in files.values())
    assert not any("pki" in path for path in files)  # no key material
    bare = spec_of(address=None, gateway=None, dns=[])
    bare["interfaces"] = []
    assert sorted(set(files) - set(prov.identity_files(CLUSTER, "web1", bare))) == [
        "etc/resolv.conf", "etc/systemd/network/10-xencluster-eth0.network"]


# --- the plan ------------------------------------------------------------------------------------------


def plan_of(facts, spec=None, guest="web1"):
    return prov.build_plan(CLUSTER, guest, spec or spec_of(), "node1", facts)


def test_plan_fresh_blank_legs_creates():
    plan = plan_of(blank_facts())
    assert plan["problems"] == []
    assert [(d["disk"], d["md"], d["uuid"], d["array"], d["filesystem"], d["fs_uuid"]) for d in plan["disks"]] == [
        ("root", ROOT_MD, ROOT_UUID, "create", "ext4", ROOT_FS), ("data", DATA_MD, DATA_UUID, "create", "xfs", DATA_FS)]
    assert plan["disks"][0]["legs"] == LEGS["root"]
    assert plan["disks"][0]["legs_state"] == {p: "blank" for p in LEGS["root"]}
    assert plan["mount"] == "/run/xencluster-provision/web1" and plan["os"]["source"] == "image"
    assert plan["files"] == sorted(prov.identity_files(CLUSTER, "web1", spec_of()))


def test_plan_both_legs_ours_assembles():
    facts = blank_facts()
    facts["superblocks"].update({p: own_superblock(ROOT_UUID) for p in LEGS["root"]})
    plan = plan_of(facts)
    assert plan["problems"] == []
    assert [d["array"] for d in plan["disks"]] == ["assemble", "create"]
    assert plan["disks"][0]["legs_state"] == {p: "ours" for p in LEGS["root"]}


def test_plan_one_ours_one_blank_assembles_degraded_and_adds():
    facts = blank_facts()
    facts["superblocks"][LEGS["root"][0]] = own_superblock(ROOT_UUID)
    plan = plan_of(facts)
    assert plan["problems"] == []
    assert plan["disks"][0]["array"] == "assemble degraded and add the blank leg (full resync)"
    assert plan["disks"][0]["legs_state"] == {LEGS["root"][0]: "ours", LEGS["root"][1]: "blank"}


def test_plan_an_array_already_assembled_here():
    facts = blank_facts()
    facts["superblocks"].update({p: own_superblock(ROOT_UUID) for p in LEGS["root"]})
    facts["active"] = {ROOT_MD: True}
    plan = plan_of(facts)
    assert plan["problems"] == [] and plan["disks"][0]["active"] is True
    assert plan["disks"][0]["array"].startswith("already assembled here")


def test_plan_refuses_a_foreign_superblock():
    facts = blank_facts()
    facts["superblocks"][LEGS["data"][1]] = own_superblock("6a26659a:350b5f59:385754c0:6857aa6a")
    plan = plan_of(facts)
    [problem] = plan["problems"]
    assert problem.startswith(f"disk data: {LEGS['data'][1]} carries another md array's superblock: refused")
    assert plan["disks"][1]["legs_state"][LEGS["data"][1]] == "foreign"


def test_plan_refuses_a_blank_leg_that_holds_a_filesystem():
    facts = blank_facts()
    facts["contents"][LEGS["root"][1]] = "ext4"
    assert plan_of(facts)["problems"] == [
        f"disk root: refused, provisioning never overwrites data: {LEGS['root'][1]} holds ext4"]


def test_plan_refuses_a_missing_leg():
    facts = blank_facts()
    facts["present"][LEGS["data"][0]] = False
    del facts["superblocks"][LEGS["data"][0]]
    assert plan_of(facts)["problems"] == [
        f"disk data: leg(s) not at their stable path on this node: {LEGS['data'][0]}"]


def test_plan_refuses_a_guest_that_exists_on_the_node():
    facts = dict(blank_facts(), domains={"web1": {"state": "running"}})
    assert plan_of(facts)["problems"] == ["web1 exists on node1 (running): a running guest is never provisioned"]


@pytest.mark.parametrize("fs", ["none", "swap"])
def test_plan_refuses_a_root_disk_without_a_root_filesystem(fs):
    spec = spec_of()
    spec["disks"][0]["filesystem"] = fs
    [problem] = plan_of(blank_facts(spec), spec)["problems"]
    assert problem.startswith(f"root disk root has filesystem {fs}: provisioning needs one of ext2, ext3, ext4, xfs")


def test_plan_refuses_a_guest_without_provision():
    spec = spec_of()
    spec["provision"] = None
    plan = plan_of(blank_facts(), spec)
    assert plan["problems"] == ["web1 has no provision settings in pillar (xencluster.guests.web1.provision)"]
    assert plan["files"] == []


# --- facts, plan() and install's refusals ---------------------------------------------------------------


def test_plan_reads_the_facts_and_probes_blank_legs_only(host, dom0):
    host.superblocks[LEGS["root"][0]] = own_superblock(ROOT_UUID)
    host.fs[LEGS["data"][1]] = ("xfs", "0a1b2c3d-0000-4000-8000-000000000001")
    plan = prov.plan("web1")
    assert plan["problems"] == [f"disk data: refused, provisioning never overwrites data: {LEGS['data'][1]} holds xfs"]
    probed = [c[-1] for c in host.argvs("blkid")]
    assert probed == [LEGS["root"][1], *LEGS["data"]]  # the leg with a superblock is not probed
    assert host.argvs("mdadm", "mkfs.ext4", "mkfs.xfs", "mount", "tar") == []


@pytest.mark.parametrize("bad", ["Web1", "-web1", "web1;reboot", "", "a" * 32, None, 7, "wéb1"])
def test_bad_guest_names_run_nothing(host, bad):
    for call in (lambda: prov.plan(bad), lambda: prov.install(bad)):
        with pytest.raises(SaltInvocationError):
            call()
    assert host.calls == []


def test_a_guest_the_node_may_not_run(host):
    with pytest.raises(SaltInvocationError, match="does not let node1 run web9"):
        prov.install("web9")
    assert host.calls == []


@pytest.mark.parametrize("case", ["foreign", "running", "missing"])
def test_install_refuses_before_anything_changes(host, dom0, case):
    if case == "foreign":
        host.superblocks[LEGS["root"][1]] = own_superblock(DATA_UUID)  # another disk's array
    elif case == "running":
        host.domains["web1"] = {"state": "running"}
    else:
        host.devs.discard(LEGS["root"][1])
    with pytest.raises(CommandExecutionError, match="web1 cannot be provisioned on node1: "):
        prov.install("web1")
    assert {c[0] for c in host.calls} <= {"blkid"}  # only the probes of blank legs
    assert not os.path.exists(dom0["root"])


# --- install --------------------------------------------------------------------------------------------


def create_argv(md, uuid_text, name, legs):
    return ["mdadm", "--create", md, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2", "--bitmap=internal",
            f"--uuid={uuid_text}", "--homehost=web1", f"--name={name}", *legs]  # fmt: skip


def test_install_fresh(host, dom0):
    res = prov.install("web1", test=False)
    root = dom0["root"]
    assert res["changed"] is True and res["node"] == "node1"
    # md runs over loop devices on the legs (LIO holds the local leg), each mapped back to its leg here
    assert [[host.attached[a] if a in host.attached else a for a in argv] for argv in host.argvs("mdadm")] == [
        create_argv(ROOT_MD, ROOT_UUID, "root", LEGS["root"]), create_argv(DATA_MD, DATA_UUID, "data", LEGS["data"]),
        ["mdadm", "--stop", ROOT_MD], ["mdadm", "--stop", DATA_MD]]  # fmt: skip
    assert host.loops == {}  # every loop detached, after the arrays stopped
    order = [c[:2] for c in host.argvs("losetup", "mdadm")]
    last_stop = max(i for i, c in enumerate(order) if c == ["mdadm", "--stop"])
    detaches = [i for i, c in enumerate(order) if c == ["losetup", "--detach"]]
    assert len(detaches) == 4 and min(detaches) > last_stop, order  # loops go only once md let them go
    assert host.argvs("mkfs.ext4", "mkfs.xfs") == [["mkfs.ext4", "-q", "-U", ROOT_FS, "--", ROOT_MD],
                                                   ["mkfs.xfs", "-q", "-m", f"uuid={DATA_FS}", DATA_MD]]  # fmt: skip
    assert host.argvs("mount", "umount") == [["mount", "-t", "ext4", "-o", "nodev,nosuid", "--", ROOT_MD, root],
                                             ["umount", "--", root]]  # fmt: skip
    assert host.argvs("tar") == [["tar", "--extract", f"--file={dom0['image']}", f"--directory={root}",
                                  "--numeric-owner", "--preserve-permissions", "--same-owner", "--zstd"]]  # fmt: skip
    assert host.mounted == set() and not {ROOT_MD, DATA_MD} & host.devs  # nothing left in dom0
    # the root filesystem (the tmp dir stays: not really mounted, rmdir fails on its files)
    assert json.loads(pathlib.Path(root, prov.OS_MARKER).read_text())["source"] == "image"
    for path, (content, mode) in prov.identity_files(CLUSTER, "web1", spec_of()).items():
        st = os.stat(os.path.join(root, path))
        assert pathlib.Path(root, path).read_text() == content and (st.st_mode & 0o777) == mode
    steps = [s["step"] for s in res["steps"]]
    assert steps == ["array root", "filesystem root", "array data", "filesystem data", "mount root", "install os",
                     "identity", "stopped arrays"]  # fmt: skip
    assert res["steps"][-1]["detail"] == [ROOT_MD, DATA_MD]


def test_install_of_legs_that_are_ours_assembles(host, dom0):
    host.superblocks.update({p: own_superblock(ROOT_UUID) for p in LEGS["root"]})
    host.superblocks[LEGS["data"][0]] = own_superblock(DATA_UUID)
    host.fs.update({ROOT_MD: ("ext4", ROOT_FS), DATA_MD: ("xfs", DATA_FS)})
    res = prov.install("web1")
    assert [[host.attached.get(a, a) for a in argv] for argv in host.argvs("mdadm")[:3]] == [
        ["mdadm", "--assemble", ROOT_MD, "--run", f"--uuid={ROOT_UUID}", *LEGS["root"]],
        ["mdadm", "--assemble", DATA_MD, "--run", f"--uuid={DATA_UUID}", LEGS["data"][0]],
        ["mdadm", "--manage", DATA_MD, "--add", LEGS["data"][1]]]  # fmt: skip
    assert host.loops == {}
    assert host.argvs("mkfs.ext4", "mkfs.xfs") == []  # our filesystems are kept
    details = {s["step"]: s["detail"] for s in res["steps"]}
    assert details["array root"] == "assembled" and details["array data"] == f"assembled, added {LEGS['data'][1]}"
    assert details["filesystem root"] == "kept ext4" and details["filesystem data"] == "kept xfs"
    assert {s["step"]: s["changed"] for s in res["steps"]}["array root"] is False  # assembling changes nothing


def test_a_new_array_never_adopts_what_its_extents_held(host, dom0):
    """md --create does not zero: a deprovisioned guest's filesystem (our UUID) or another one is
    found inside the new array. Wiped and made anew, and the OS installed again: nothing is reused."""
    host.fs.update({ROOT_MD: ("ext4", ROOT_FS), DATA_MD: ("ext4", "0a1b2c3d-0000-4000-8000-000000000001")})
    res = prov.install("web1")
    assert host.argvs("wipefs") == [["wipefs", "--all", "--", ROOT_MD], ["wipefs", "--all", "--", DATA_MD]]
    assert host.argvs("mkfs.ext4", "mkfs.xfs") == [["mkfs.ext4", "-q", "-U", ROOT_FS, "--", ROOT_MD],
                                                   ["mkfs.xfs", "-q", "-m", f"uuid={DATA_FS}", DATA_MD]]  # fmt: skip
    calls = [c[0] for c in host.argvs("wipefs", "mkfs.ext4")]
    assert calls[:2] == ["wipefs", "mkfs.ext4"]  # wiped before the mkfs
    details = {s["step"]: s["detail"] for s in res["steps"]}
    assert details["filesystem root"] == f"made ext4 (wiped the ext4 {ROOT_FS} the new array's extents held)"
    assert len(host.argvs("tar")) == 1


def test_an_assembled_array_keeps_its_filesystem_and_is_never_wiped(host, dom0):
    host.superblocks.update({p: own_superblock(ROOT_UUID) for p in LEGS["root"]})
    host.superblocks.update({p: own_superblock(DATA_UUID) for p in LEGS["data"]})
    host.fs.update({ROOT_MD: ("ext4", ROOT_FS), DATA_MD: ("xfs", DATA_FS)})
    prov.install("web1")
    assert host.argvs("wipefs", "mkfs.ext4", "mkfs.xfs") == []


def test_install_refuses_a_foreign_filesystem_on_our_array_and_cleans_up(host, dom0):
    host.superblocks.update({p: own_superblock(ROOT_UUID) for p in LEGS["root"]})
    host.fs[ROOT_MD] = ("ext4", "0a1b2c3d-0000-4000-8000-000000000001")
    with pytest.raises(CommandExecutionError, match=f"{ROOT_MD} already holds ext4 .* refused"):
        prov.install("web1")
    assert host.argvs("mkfs.ext4", "mkfs.xfs", "mount", "tar") == []
    assert ["mdadm", "--stop", ROOT_MD] in host.argvs("mdadm") and ROOT_MD not in host.devs


@pytest.mark.parametrize(
    "fstype, argv",
    [("ext4", ["mkfs.ext4", "-q", "-U", DATA_FS, "--", DATA_MD]),
     ("ext3", ["mkfs.ext3", "-q", "-U", DATA_FS, "--", DATA_MD]),
     ("ext2", ["mkfs.ext2", "-q", "-U", DATA_FS, "--", DATA_MD]),
     ("xfs", ["mkfs.xfs", "-q", "-m", f"uuid={DATA_FS}", DATA_MD]),
     ("swap", ["mkswap", "-U", DATA_FS, "--", DATA_MD]),
     ("none", None)],
)  # fmt: skip
def test_mkfs_argv_per_filesystem(host, dom0, view, fstype, argv):
    view["guests"]["web1"]["disks"][1]["filesystem"] = fstype
    res = prov.install("web1")
    assert host.argvs("mkfs.ext4", "mkfs.ext3", "mkfs.ext2", "mkfs.xfs", "mkswap")[1:] == ([argv] if argv else [])
    detail = {s["step"]: s["detail"] for s in res["steps"]}["filesystem data"]
    assert detail == (f"made {fstype}" if argv else "no filesystem (none in pillar)")


@pytest.mark.parametrize(
    "suffix, flags",
    [(".tar", []), (".tar.gz", ["--gzip"]), (".tgz", ["--gzip"]), (".tar.xz", ["--xz"]), (".tar.zst", ["--zstd"])],
)
def test_tar_argv_per_suffix(suffix, flags):
    argv = prov._install_argv(dict(IMAGE_PROV, image=f"/srv/images/deb12{suffix}"), "/run/x/web1")
    assert argv == ["tar", "--extract", f"--file=/srv/images/deb12{suffix}", "--directory=/run/x/web1",
                    "--numeric-owner", "--preserve-permissions", "--same-owner", *flags]  # fmt: skip


def test_debootstrap_argv():
    prov_ = dict(IMAGE_PROV, source="debootstrap", debootstrap=BOOT)
    assert prov._install_argv(prov_, "/run/x/web1") == [
        "debootstrap", "--variant=minbase", "--include=salt-minion,mdadm", "bookworm", "/run/x/web1",
        "http://deb.debian.org/debian"]  # fmt: skip
    plain = dict(prov_, debootstrap=dict(BOOT, include=[], variant="buildd"))
    assert prov._install_argv(plain, "/r") == ["debootstrap", "--variant=buildd", "bookworm", "/r",
                                               "http://deb.debian.org/debian"]  # fmt: skip


def test_install_by_debootstrap(host, dom0, view, monkeypatch):
    view["guests"]["web1"]["provision"].update(source="debootstrap", image=None, debootstrap=BOOT)
    monkeypatch.setattr(prov.salt.utils.path, "which", lambda name: f"/usr/sbin/{name}")
    res = prov.install("web1")
    assert host.argvs("debootstrap") == [["debootstrap", "--variant=minbase", "--include=salt-minion,mdadm",
                                          "bookworm", dom0["root"], "http://deb.debian.org/debian"]]  # fmt: skip
    assert host.argvs("tar") == []
    assert {s["step"]: s["detail"] for s in res["steps"]}["install os"].startswith(
        "installed from http://deb.debian.org/debian in ")
    monkeypatch.setattr(prov.salt.utils.path, "which", lambda name: None)
    pathlib.Path(dom0["root"], prov.OS_MARKER).unlink()
    with pytest.raises(CommandExecutionError, match="debootstrap is not installed on node1"):
        prov.install("web1")


def test_the_os_is_not_reinstalled_once_complete(host, dom0):
    first = prov.install("web1")
    assert first["changed"] is True and len(host.argvs("tar")) == 1
    host.calls.clear()
    second = prov.install("web1")  # the arrays are ours now, the filesystems kept, the marker there
    assert host.argvs("tar") == [] and host.argvs("mkfs.ext4", "mkfs.xfs") == []
    assert [c[1] for c in host.argvs("mdadm")] == ["--assemble", "--assemble", "--stop", "--stop"]
    details = {s["step"]: s["detail"] for s in second["steps"]}
    assert details["install os"] == "already installed" and details["identity"] == []
    assert second["changed"] is False


def test_a_missing_golden_image_is_said(host, dom0):
    os.unlink(dom0["image"])
    with pytest.raises(CommandExecutionError, match=f"golden image {dom0['image']} is not a file on node1"):
        prov.install("web1")
    assert host.argvs("tar") == [] and host.mounted == set()


@pytest.mark.parametrize("failing", ["tar", "mount", "mkfs.xfs"])
def test_cleanup_runs_when_a_step_raises(host, dom0, failing):
    host.fail[failing] = "boom"
    with pytest.raises(CommandExecutionError, match=f"{failing} failed \\(rc 1\\): boom"):
        prov.install("web1")
    assert host.mounted == set() and not {ROOT_MD, DATA_MD} & host.devs
    stops = [c for c in host.argvs("mdadm") if c[1] == "--stop"]
    assert stops == [["mdadm", "--stop", md] for md in (ROOT_MD, DATA_MD) if [c for c in host.calls if md in c]]
    if failing == "tar":
        assert host.argvs("umount") == [["umount", "--", dom0["root"]]]
        assert not os.path.exists(os.path.join(dom0["root"], prov.OS_MARKER))  # no marker: a re-run installs


def test_a_failing_cleanup_does_not_hide_the_error(host, dom0, caplog):
    host.fail["tar"] = "no space"
    host.on["umount"] = lambda argv: None
    host.fail["umount"] = "busy"
    with pytest.raises(CommandExecutionError, match="tar failed"):
        prov.install("web1")
    assert [c[1] for c in host.argvs("mdadm")][-2:] == ["--stop", "--stop"]  # still stopped after umount failed
    assert "cleanup failed: umount failed (rc 1): busy" in caplog.text


def test_install_test_true_changes_nothing(host, dom0):
    res = prov.install("web1", test=True)
    assert res["changed"] is False and res["steps"] == []
    assert [d["array"] for d in res["plan"]["disks"]] == ["create", "create"]
    assert {c[0] for c in host.calls} == {"blkid"}  # the probes of the blank legs only
    assert not os.path.exists(dom0["root"]) and host.mounted == set()


# --- files in the guest root ----------------------------------------------------------------------------


@needs_root
def test_write_file_creates_parents_and_is_idempotent(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert prov._write_file(str(root), "etc/salt/minion.d/x.conf", "id: web1\n", 0o640) is True
    target = root / "etc" / "salt" / "minion.d" / "x.conf"
    assert target.read_text() == "id: web1\n" and (target.stat().st_mode & 0o777) == 0o640
    assert prov._write_file(str(root), "etc/salt/minion.d/x.conf", "id: web1\n", 0o640) is False
    assert prov._write_file(str(root), "etc/salt/minion.d/x.conf", "id: web1\n", 0o644) is True  # mode differs
    assert prov._write_file(str(root), "etc/salt/minion.d/x.conf", "id: web2\n", 0o644) is True
    assert target.read_text() == "id: web2\n"
    assert sorted(os.listdir(target.parent)) == ["x.conf"]  # no temporary file left


@needs_root
def test_write_file_replaces_a_link_instead_of_following_it(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "shadow").write_text("precious\n")
    (root / "etc" / "hostname").symlink_to(outside / "shadow")
    assert prov._write_file(str(root), "etc/hostname", "web1\n", 0o644) is True
    assert (outside / "shadow").read_text() == "precious\n"
    assert not (root / "etc" / "hostname").is_symlink() and (root / "etc" / "hostname").read_text() == "web1\n"


@needs_root
def test_write_file_refuses_a_linked_parent_directory(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "etc").symlink_to(outside)
    with pytest.raises(OSError):
        prov._write_file(str(root), "etc/hostname", "web1\n", 0o644)
    with pytest.raises(OSError):
        prov._write_file(str(root), "etc/salt/minion_id", "web1\n", 0o644)
    assert os.listdir(outside) == []


@needs_root
def test_a_planted_link_in_the_image_cannot_make_identity_write_outside(host, dom0, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()

    def plant(argv):  # the "image" brings etc/ as a link out of the guest root
        os.symlink(outside, os.path.join(dom0["root"], "etc"))

    host.on["tar"] = plant
    with pytest.raises(CommandExecutionError, match="Not a directory"):
        prov.install("web1")
    assert os.listdir(outside) == [] and host.mounted == set() and not {ROOT_MD, DATA_MD} & host.devs


# --- the minion key ---------------------------------------------------------------------------------------


@pytest.fixture
def keys(pki):
    """node1's minion key pair: private in the minion's pki_dir, public in the master's minions/."""
    private, public = salt.crypt.gen_keys(2048)
    pki["minion"].mkdir()
    (pki["minion"] / "minion.pem").write_text(private)
    (pki["master"] / "minions").mkdir(parents=True)
    (pki["master"] / "minions" / "node1").write_text(public)
    guest_private, guest_public = salt.crypt.gen_keys(2048)
    return {"private": guest_private, "public": guest_public}


def test_the_sealed_key_round_trip(keys):
    sealed = runner._seal_for("node1", keys["private"], keys["public"])
    assert set(sealed) == set(prov.MINION_KEY_FIELDS) and sealed["pub"] == keys["public"]
    assert keys["private"] not in json.dumps(sealed)
    assert "PRIVATE KEY" not in base64.b64decode(sealed["ciphertext"]).decode("latin-1")
    assert prov._unseal(sealed) == keys["private"]


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "sealed_key", "pub"])
def test_a_tampered_sealed_key_is_refused(keys, field):
    sealed = runner._seal_for("node1", keys["private"], keys["public"])
    if field == "pub":
        sealed["pub"] = sealed["pub"].replace("A", "B", 1)  # authenticated as associated data
    else:
        raw = bytearray(base64.b64decode(sealed[field]))
        raw[len(raw) // 2] ^= 0x01
        sealed[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(CommandExecutionError, match="cannot unseal the guest's minion key with node1's key"):
        prov._unseal(sealed)


def test_a_key_sealed_to_another_dom0_is_refused(keys, pki):
    other_private, other_public = salt.crypt.gen_keys(2048)
    (pki["master"] / "minions" / "node2").write_text(other_public)
    sealed = runner._seal_for("node2", keys["private"], keys["public"])
    with pytest.raises(CommandExecutionError, match="cannot unseal"):
        prov._unseal(sealed)


@pytest.mark.parametrize("bad", [None, "x", {}, {"pub": "p", "sealed_key": "s", "nonce": "n"},
                                 {"pub": "p", "sealed_key": "s", "nonce": "n", "ciphertext": 5}])  # fmt: skip
def test_a_malformed_sealed_key_is_an_invocation_error(bad):
    with pytest.raises(SaltInvocationError, match="minion_key must be a mapping"):
        prov._unseal(bad)


@needs_root
def test_install_writes_the_unsealed_key_and_drops_a_stale_master_key(host, dom0, keys):
    sealed = runner._seal_for("node1", keys["private"], keys["public"])
    pki_dir = pathlib.Path(dom0["root"], "etc/salt/pki/minion")

    def image(argv):  # the golden image carries a master key from where it was made
        pki_dir.mkdir(parents=True)
        (pki_dir / "minion_master.pub").write_text("stale")

    host.on["tar"] = image
    res = prov.install("web1", minion_key=sealed)
    assert (pki_dir / "minion.pem").read_text() == keys["private"]
    assert ((pki_dir / "minion.pem").stat().st_mode & 0o777) == 0o400
    assert (pki_dir / "minion.pub").read_text() == keys["public"]
    assert not (pki_dir / "minion_master.pub").exists()
    identity = {s["step"]: s["detail"] for s in res["steps"]}["identity"]
    assert "etc/salt/pki/minion/minion.pem" in identity
    assert "etc/salt/pki/minion/minion_master.pub (removed)" in identity
    assert keys["private"] not in json.dumps(res)  # the private key is never in the return


# --- one install of a guest at a time on a dom0 -------------------------------------------------------


def test_a_second_install_of_the_same_guest_waits_for_the_first(dom0):
    with prov._install_lock("web1"):
        with pytest.raises(CommandExecutionError, match="another install of web1 still runs on node1"):
            with prov._install_lock("web1", wait=0):
                pass
        with prov._install_lock("web2", wait=0):  # another guest: not held up
            pass
    with prov._install_lock("web1", wait=0):  # released
        pass
