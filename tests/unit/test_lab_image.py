"""Pure parts of the lab image builder: the cache key, apt sources parsing, preflight."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from lab import config, image
from lab.errors import PreflightError

APT_VERSIONS = {
    "kernel_abi": "6.1.0-56-amd64",
    "kernel_package": "linux-image-6.1.0-56-amd64",
    "kernel_version": "6.1.140-1",
    "xen-hypervisor-4.17-amd64": "4.17.5+72-g01140da4e8-1",
    "xen-utils-4.17": "4.17.5+72-g01140da4e8-1",
}

DEB822 = """\
Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://example.org/disabled
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: https://download.docker.com/linux/debian
Suites: bookworm
Components: stable
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBFit2ioBEADhWpZ8/wvZ6hUTiXOwQHXMAlaFHcPH9hAtr4F1y2+OYdbtMuth
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
# the main archive
deb http://mirror.example/debian bookworm main non-free-firmware
deb [arch=amd64 signed-by=/etc/apt/keyrings/local.gpg] http://mirror.example/debian bookworm-updates main
deb-src http://mirror.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main  # trailing comment
deb http://apt.example/nodistro nodistro main
"""


# --- the key ---------------------------------------------------------------------------


@pytest.fixture
def key_env(tmp_path, monkeypatch):
    """A private copy of every file input, with apt and the host sources stubbed."""
    source = tmp_path / "lab" / "image.py"
    files = tmp_path / "lab" / "files"
    source.parent.mkdir(parents=True)
    source.write_text("# builder\n")
    domu_source = tmp_path / "lab" / "domu.py"
    domu_source.write_text("# probe guest\n")
    guest_source = tmp_path / "lab" / "guestimage.py"
    guest_source.write_text("# guest image\n")
    (files / "rootfs" / "etc").mkdir(parents=True)
    (files / "rootfs" / "etc" / "fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("salt==3008.3\npyzmq==27.3.0\n")
    versions = dict(APT_VERSIONS)
    monkeypatch.setattr(config, "REPO", tmp_path)
    monkeypatch.setattr(config, "CONSTRAINTS", constraints)
    monkeypatch.setattr(image, "SOURCE_FILE", source)
    monkeypatch.setattr(image, "FILES_DIR", files)
    monkeypatch.setattr(image, "DOMU_SOURCE", domu_source)
    monkeypatch.setattr(image, "GUEST_SOURCE", guest_source)
    monkeypatch.setattr(image, "resolve_apt_versions", lambda: dict(versions))
    monkeypatch.setattr(image, "host_debian_repos", lambda: image.debian_repos(image.parse_deb822_sources(DEB822)))
    Env = namedtuple("Env", "source files constraints versions")
    return Env(source, files, constraints, versions)


def test_key_is_stable_and_short_hex(key_env):
    first = image.image_key()
    assert first == image.image_key()
    assert len(first) == image.KEY_LENGTH
    int(first, 16)


@pytest.mark.parametrize(
    "change",
    [
        lambda env: env.source.write_text("# builder, changed\n"),
        lambda env: env.source.with_name("domu.py").write_text("# probe guest, changed\n"),
        lambda env: env.source.with_name("guestimage.py").write_text("# guest image, changed\n"),
        lambda env: (env.files / "rootfs" / "etc" / "fstab").write_text("/dev/vdb / ext4 rw 0 1\n"),
        lambda env: (env.files / "new-unit.service").write_text("[Unit]\n"),
        lambda env: (env.files / "rootfs" / "etc" / "fstab").chmod(0o755),
        lambda env: env.constraints.write_text("salt==3008.3\npyzmq==27.4.0\n"),
        lambda env: env.versions.update(kernel_abi="6.1.0-57-amd64",
                                        kernel_package="linux-image-6.1.0-57-amd64"),
        lambda env: env.versions.update(kernel_version="6.1.141-1"),
        lambda env: env.versions.update({"xen-utils-4.17": "4.17.6-1"}),
        lambda env: env.versions.update({"xen-hypervisor-4.17-amd64": "4.17.6-1"}),
    ],
    ids=["image.py", "domu.py", "guestimage.py", "files-content", "files-new", "files-mode", "constraints", "kernel-abi",
         "kernel-version", "xen-utils", "xen-hypervisor"],
)
def test_key_changes_with_every_input(key_env, change):
    before = image.image_key()
    change(key_env)
    assert image.image_key() != before


def test_key_changes_with_baked_conventions(key_env, monkeypatch):
    before = image.image_key()
    monkeypatch.setattr(config, "IQN_PREFIX", "iqn.2026-01.lab.other")
    assert image.image_key() != before


def test_key_ignores_runtime_only_settings(key_env, monkeypatch):
    before = image.image_key()
    monkeypatch.setattr(config, "SSH_PORT_BASE", 3000)
    monkeypatch.setattr(config, "NODE_RAM_MB", 4096)
    assert image.image_key() == before


def test_pinned_salt_version():
    assert image.pinned_salt_version("jinja2==3.1\nSalt == 3008.3  # pinned\n") == "3008.3"
    with pytest.raises(PreflightError, match="salt"):
        image.pinned_salt_version("salt-factories==1.0\n")


# --- apt output parsing ----------------------------------------------------------------


def test_kernel_abi_package_from_apt_cache_depends():
    output = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert image.kernel_abi_package(output) == "linux-image-6.1.0-56-amd64"


def test_kernel_abi_package_missing_names_apt_get_update():
    with pytest.raises(image.BuildError, match="apt-get update"):
        image.kernel_abi_package("linux-image-amd64\n")


def test_candidate_version():
    output = "xen-utils-4.17:\n  Installed: (none)\n  Candidate: 4.17.7+13-g2445b30a44-0+deb12u1\n"
    assert image.candidate_version(output, "xen-utils-4.17") == "4.17.7+13-g2445b30a44-0+deb12u1"
    with pytest.raises(image.BuildError, match="apt-get update"):
        image.candidate_version("x:\n  Installed: (none)\n  Candidate: (none)\n", "x")


# --- sources parsing -------------------------------------------------------------------


def test_parse_deb822_sources():
    repos = image.parse_deb822_sources(DEB822)
    assert [r.uris[0] for r in repos] == [
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
        "https://download.docker.com/linux/debian",
    ]  # the Enabled: no stanza is dropped
    main = repos[0]
    assert main.types == ("deb", "deb-src")
    assert main.suites == ("bookworm", "bookworm-updates")
    assert main.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert repos[2].signed_by.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n.\n")


def test_parse_one_line_sources():
    repos = image.parse_one_line_sources(ONE_LINE)
    assert [(r.types[0], r.uris[0], r.suites[0]) for r in repos] == [
        ("deb", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://mirror.example/debian", "bookworm-updates"),
        ("deb-src", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://security.example/debian-security", "bookworm-security"),
        ("deb", "http://apt.example/nodistro", "nodistro"),
    ]
    assert repos[0].components == ("main", "non-free-firmware")
    assert repos[1].signed_by == "/etc/apt/keyrings/local.gpg"
    assert repos[3].components == ("main",)


def test_debian_repos_keep_binary_bookworm_main_only():
    repos = image.debian_repos(image.parse_deb822_sources(DEB822) + image.parse_one_line_sources(ONE_LINE))
    assert [(r.uris[0], r.suites) for r in repos] == [
        ("http://deb.debian.org/debian", ("bookworm", "bookworm-updates")),
        ("http://deb.debian.org/debian-security", ("bookworm-security",)),
        ("http://mirror.example/debian", ("bookworm",)),
        ("http://mirror.example/debian", ("bookworm-updates",)),
        ("http://security.example/debian-security", ("bookworm-security",)),
    ]
    assert all(r.types == ("deb",) for r in repos)
    assert image.debootstrap_mirror(repos) == "http://deb.debian.org/debian"


def test_read_host_sources_reads_both_formats(tmp_path):
    sources_dir = tmp_path / "sources.list.d"
    sources_dir.mkdir()
    (sources_dir / "debian.sources").write_text(DEB822)
    (sources_dir / "extra.list").write_text(ONE_LINE)
    (sources_dir / "old.list.disabled").write_text("deb http://ignored.example bookworm main\n")
    repos = image.read_host_sources(tmp_path / "sources.list", sources_dir)
    uris = {r.uris[0] for r in repos}
    assert "http://deb.debian.org/debian" in uris and "http://mirror.example/debian" in uris
    assert "http://ignored.example" not in uris


def test_render_deb822_round_trips():
    repos = image.parse_deb822_sources(DEB822)
    assert image.parse_deb822_sources(image.render_deb822(repos)) == [
        image.AptRepo(r.types, r.uris, r.suites, r.components, r.signed_by) for r in repos
    ]


def test_repos_survive_the_manifest_round_trip():
    repos = image.debian_repos(image.parse_deb822_sources(DEB822))
    assert [image.AptRepo.from_dict(r.as_dict()) for r in repos] == repos


def test_no_bookworm_source_is_a_preflight_error(monkeypatch):
    monkeypatch.setattr(image, "read_host_sources",
                        lambda: image.parse_one_line_sources("deb http://x.example/debian trixie main\n"))
    with pytest.raises(PreflightError, match="bookworm"):
        image.host_debian_repos()


# --- preflight -------------------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def healthy_host(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool, path=None: f"/usr/bin/{tool}")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * 2**30, 0, 50 * 2**30))
    monkeypatch.setattr(config, "LAB_DIR", tmp_path / "lab")


def test_preflight_passes_on_a_healthy_host(healthy_host):
    image.require_build_prerequisites()


def test_preflight_not_root(healthy_host, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PreflightError, match="root"):
        image.require_build_prerequisites()


def test_preflight_missing_tool_names_the_package(healthy_host, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool, path=None: None if tool in ("mke2fs", "qemu-img") else tool)
    with pytest.raises(PreflightError) as excinfo:
        image.require_build_prerequisites()
    message = str(excinfo.value)
    assert "mke2fs" in message and "qemu-img" in message
    assert "apt-get install e2fsprogs qemu-utils" in message
    assert "\n" not in message


def test_preflight_too_little_disk_says_free_and_needed(healthy_host, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * 2**30, 0, 3 * 2**30))
    with pytest.raises(PreflightError) as excinfo:
        image.require_build_prerequisites()
    message = str(excinfo.value)
    assert "3.0 GiB free" in message and "8.0 GiB needed" in message


def test_preflight_disk_check_can_be_skipped_for_cache_hits(healthy_host, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * 2**30, 0, 1 * 2**30))
    image.require_build_prerequisites(need_disk=False)


# --- completeness and mounts -----------------------------------------------------------


def test_is_complete_needs_every_file_and_a_matching_manifest(tmp_path):
    for name in image.IMAGE_FILES:
        (tmp_path / name).write_text("x")
    assert not image.is_complete(tmp_path, "abc")  # no manifest yet: still being built
    (tmp_path / image.MANIFEST).write_text('{"key": "abc"}')
    assert image.is_complete(tmp_path, "abc")
    assert not image.is_complete(tmp_path, "other")
    (tmp_path / "vmlinuz").unlink()
    assert not image.is_complete(tmp_path, "abc")


def test_apt_lists_state(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    monkeypatch.setattr(image, "APT_LISTS_DIR", lists)
    monkeypatch.setattr(image, "APT_UPDATE_STAMP", tmp_path / "stamp")
    assert image.apt_lists_state() == "missing"
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_text("")
    assert image.apt_lists_state() == "fresh"
    later = Path(lists).stat().st_mtime + image.APT_LISTS_MAX_AGE_S + 1
    assert image.apt_lists_state(now=later) == "stale"


def _mountinfo(tmp_path, monkeypatch, points):
    lines = [f"{20 + i} 1 0:{i} / {point} rw - tmpfs tmpfs rw" for i, point in enumerate(points)]
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(image, "MOUNTINFO", mountinfo)


def test_mounts_under_finds_nested_mounts_deepest_first(tmp_path, monkeypatch):
    root = tmp_path / "rootfs"
    root.mkdir()
    _mountinfo(tmp_path, monkeypatch, [
        "/proc", f"{root}/dev", f"{root}/dev/pts", f"{root}2/dev", r"/var/tmp/with\040space",
    ])
    assert image.mounts_under(root) == [root / "dev" / "pts", root / "dev"]
    assert image.mounts_under(Path("/var/tmp/with space")) == [Path("/var/tmp/with space")]


def test_remove_tree_refuses_while_something_stays_mounted(tmp_path, monkeypatch):
    root = tmp_path / "rootfs"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "null").write_text("")
    _mountinfo(tmp_path, monkeypatch, [f"{root}/dev"])
    monkeypatch.setattr(image.subprocess, "run", lambda *args, **kwargs: None)  # umount "fails"
    with pytest.raises(image.BuildError, match="cannot unmount"):
        image.remove_tree(root)
    assert (root / "dev" / "null").exists()


def test_failed_command_reports_command_and_output_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(image, "LOGS_DIR", tmp_path)
    builder = image.Builder("k", {"sources": []}, log=lambda message: None)
    builder._log_handle = open(builder.logfile, "w")
    script = "import sys; [print('line', i) for i in range(100)]; sys.exit(3)"
    with pytest.raises(image.BuildError) as excinfo:
        builder.run([image.sys.executable, "-c", script])
    builder._log_handle.close()
    error = excinfo.value
    assert "rc=3" in str(error) and "sys.exit(3)" in str(error) and "\n" not in str(error)
    assert error.details.splitlines() == [f"line {i}" for i in range(70, 100)]
    assert "line 0\n" in builder.logfile.read_text()  # the full output is in the build log


def test_networkd_files_leave_the_service_links_to_the_product(tmp_path, monkeypatch):
    """eth2/eth3 (nics 3 and 4) match no lab .network file: the product's formula bonds them."""
    monkeypatch.setattr(image, "LOGS_DIR", tmp_path)
    builder = image.Builder("k", {"sources": []}, log=lambda message: None)
    builder.rootfs = tmp_path / "rootfs"
    builder.configure_network()
    written = sorted((builder.rootfs / "etc" / "systemd" / "network").glob("*.network"))
    shipped = sorted((image.FILES_DIR / "rootfs" / "etc" / "systemd" / "network").glob("*.network"))
    assert written and shipped
    every = [config.Node(n) for n in range(1, config.MAX_NODES + 1)]
    service_macs = {node.mac(nic) for node in every for nic in config.SERVICE_NICS}
    for path in written + shipped:
        text = path.read_text()
        match = text.split("[Match]", 1)[1].split("\n[", 1)[0]
        macs = {word for line in match.splitlines() if line.startswith("MACAddress=")
                for word in line.split("=", 1)[1].split()}
        names = [line.split("=", 1)[1] for line in match.splitlines() if line.startswith("Name=")]
        assert macs or names, f"{path.name} matches every link"
        assert not macs & service_macs, path.name
        assert not any(name.startswith("eth") or "*" in name for name in names), path.name
    mgmt = (builder.rootfs / "etc/systemd/network/10-lab-mgmt.network").read_text()
    assert f"MACAddress={' '.join(node.mac(1) for node in every)}\n" in mgmt  # listed, not a wildcard


# --- the guest golden image: its debootstrap runs in the background -----------------------


@pytest.fixture
def guest_builder(tmp_path, monkeypatch):
    """A Builder with its log open and a fake debootstrap (set ``command`` on it)."""
    monkeypatch.setattr(image, "LOGS_DIR", tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    builder = image.Builder("k", {"sources": []}, log=lambda message: None)
    builder.tmp = tmp_path / "k.tmp"
    builder.rootfs = builder.tmp / "rootfs"
    builder.guestroot = builder.tmp / "guestroot"
    builder.rootfs.mkdir(parents=True)
    builder._log_handle = open(builder.logfile, "w")
    commands = {}
    monkeypatch.setattr(image.Builder, "debootstrap_command",
                        lambda self: [image.sys.executable, "-c", commands["script"], str(self.rootfs)])
    yield builder, commands
    builder._log_handle.close()


def test_for_root_shares_the_build_but_not_the_tree(guest_builder):
    builder, _ = guest_builder
    guest = builder.for_root(builder.guestroot)
    assert guest.path("etc/hosts") == builder.guestroot / "etc/hosts"
    assert builder.path("etc/hosts") == builder.rootfs / "etc/hosts"
    assert guest.durations is builder.durations and guest.resolved is builder.resolved
    assert guest.logfile == builder.logfile


def test_guest_debootstrap_runs_in_the_guest_root_and_its_output_joins_the_build_log(guest_builder):
    builder, commands = guest_builder
    commands["script"] = ("import sys, pathlib; pathlib.Path(sys.argv[1], 'marker').write_text('x'); "
                          "print('I: Base system installed successfully.')")
    with builder.background_guest_debootstrap():
        builder.wait_guest_debootstrap()
    assert (builder.guestroot / "marker").exists()
    builder._log_handle.flush()
    log = builder.logfile.read_text()
    assert "(in the background)" in log and "I: Base system installed successfully." in log
    assert not builder.guest_log.exists()
    assert "guest debootstrap (background)" in builder.durations


def test_a_failed_guest_debootstrap_is_a_build_error_with_its_output(guest_builder):
    builder, commands = guest_builder
    commands["script"] = "import sys; [print('E: line', i) for i in range(40)]; sys.exit(2)"
    with pytest.raises(image.BuildError) as excinfo:
        with builder.background_guest_debootstrap():
            builder.wait_guest_debootstrap()
    assert "rc=2" in str(excinfo.value)
    assert excinfo.value.details.splitlines()[-1] == "E: line 39"


def test_a_failing_build_stops_the_guest_debootstrap(guest_builder):
    builder, commands = guest_builder
    commands["script"] = "import time; time.sleep(60)"
    started = image.time.monotonic()
    with pytest.raises(RuntimeError):
        with builder.background_guest_debootstrap():
            raise RuntimeError("the dom0 packages failed")
    assert builder._guest_debootstrap.poll() is not None
    assert image.time.monotonic() - started < 30


def test_host_packages_list_every_build_tool_package():
    """`make host-deps` installs what the build's preflight asks for (Essential ones aside)."""
    listed = {line.strip() for line in (config.REPO / "lab" / "host-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    essential = {"coreutils", "mount", "tar", "dpkg", "apt"}
    assert set(image.HOST_TOOLS.values()) - essential <= listed
    assert "zstd" in listed
