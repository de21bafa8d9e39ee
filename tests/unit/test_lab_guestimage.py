"""The guest golden image and boot initramfs (lab/guestimage.py, lab/files/domu/guest-init)."""

import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab import domu, guestimage

# --- the golden image's pure helpers -------------------------------------------------------


def test_without_array_lines_drops_arrays_and_their_continuations():
    conf = (
        "HOMEHOST <system>\n"
        "MAILADDR root\n"
        "ARRAY /dev/md/0  metadata=1.2 UUID=3aaa0122:29827cfa:5331ad66:ca767371\n"
        "   name=buildhost:0\n"
        "ARRAY /dev/md/1 metadata=1.2 UUID=1bbb0122:29827cfa:5331ad66:ca767371 name=buildhost:1\n"
        "\n"
        "# This configuration was auto-generated\n"
    )
    assert guestimage.without_array_lines(conf) == (
        "HOMEHOST <system>\nMAILADDR root\n\n# This configuration was auto-generated\n"
    )


def test_without_array_lines_keeps_a_conf_without_arrays():
    conf = "HOMEHOST <system>\nMAILADDR root\n"
    assert guestimage.without_array_lines(conf) == conf


def _tree(root: Path, files: dict[str, str]) -> None:
    for inside, text in files.items():
        (root / inside).parent.mkdir(parents=True, exist_ok=True)
        (root / inside).write_text(text)


def test_scrub_removes_host_and_build_leftovers_and_empties_machine_id(tmp_path):
    root = tmp_path / "guest"
    _tree(root, {
        "etc/hostname": "buildhost\n", "etc/resolv.conf": "nameserver 10.0.0.1\n",
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/salt/pki/minion/minion.pem": "KEY", "etc/salt/minion_id": "buildhost\n",
        "etc/ssh/ssh_host_ed25519_key": "KEY", "etc/ssh/ssh_config": "# kept\n",
        "var/cache/apt/pkgcache.bin": "x", "var/cache/apt/archives/bash_5.2_amd64.deb": "x",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "x",
        "var/log/bootstrap.log": "x", "usr/sbin/policy-rc.d": "exit 101\n",
        "etc/mdadm/mdadm.conf": "MAILADDR root\n",
    })
    (root / "var/lib/apt/lists/partial").mkdir()
    removed = guestimage.scrub(root)
    assert (root / "etc/machine-id").read_text() == ""
    for gone in ("etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id", "etc/salt/pki",
                 "etc/salt/minion_id", "etc/ssh/ssh_host_ed25519_key", "var/cache/apt/pkgcache.bin",
                 "var/cache/apt/archives/bash_5.2_amd64.deb", "var/log/bootstrap.log",
                 "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "usr/sbin/policy-rc.d"):
        assert not (root / gone).exists(), gone
        assert gone in removed
    # apt's own directories and unrelated files stay
    assert (root / "var/lib/apt/lists/partial").is_dir()
    assert (root / "etc/ssh/ssh_config").exists() and (root / "etc/mdadm/mdadm.conf").exists()


def test_prune_docs_keeps_copyrights_locale_alias_and_directories(tmp_path):
    root = tmp_path / "guest"
    _tree(root, {
        "usr/share/doc/bash/copyright": "GPL", "usr/share/doc/bash/README": "r" * 100,
        "usr/share/man/man1/bash.1.gz": "m" * 10, "usr/share/info/dir": "i",
        "usr/share/locale/de/LC_MESSAGES/bash.mo": "l" * 7, "usr/share/locale/locale.alias": "a",
        "usr/share/zoneinfo/UTC": "z",
    })
    (root / "usr/share/doc/python3").symlink_to("python3.11")
    freed = guestimage.prune_docs(root)
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
    assert left == ["usr/share/doc/bash/copyright", "usr/share/locale/locale.alias", "usr/share/zoneinfo/UTC"]
    assert (root / "usr/share/man/man1").is_dir() and (root / "usr/share/locale/de/LC_MESSAGES").is_dir()
    assert freed >= 100 + 10 + 1 + 7


def test_dpkg_nodoc_config_excludes_what_prune_docs_removes():
    lines = guestimage.dpkg_nodoc_config().splitlines()
    assert "path-exclude=/usr/share/doc/*" in lines and "path-include=/usr/share/doc/*/copyright" in lines
    for directory in guestimage.NODOC_DIRS:
        assert f"path-exclude=/{directory}/*" in lines


def test_tree_bytes_counts_symlinks_without_following_them(tmp_path):
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/a").write_bytes(b"12345")
    (tmp_path / "lib").symlink_to("usr/lib")
    dirs_and_link = sum(p.lstat().st_size for p in (tmp_path / "usr", tmp_path / "usr/lib", tmp_path / "lib"))
    assert guestimage.tree_bytes(tmp_path) == 5 + dirs_and_link


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is not installed")
def test_archive_command_keeps_numeric_owners_modes_and_symlinks(tmp_path):
    root = tmp_path / "guest"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o4755)
    (root / "bin").symlink_to("usr/bin")
    archive = tmp_path / "guest.tar.zst"
    cmd = guestimage.archive_command(root, archive)
    assert cmd[:3] == ["tar", "--zstd", "--numeric-owner"]
    subprocess.run(cmd, check=True)
    subprocess.run(["zstd", "-q", "-d", str(archive), "-o", str(tmp_path / "guest.tar")], check=True)
    with tarfile.open(tmp_path / "guest.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["./usr/bin/tool"].mode == 0o4755
    assert members["./bin"].issym() and members["./bin"].linkname == "usr/bin"
    assert members["./usr/bin/tool"].uname == ""  # numbers only: the guest's passwd decides


def test_netfront_nics_keep_their_kernel_names():
    """systemd 252 would rename eth0 to enX0 without net.ifnames=0; the guests' networkd files say eth0."""
    link = guestimage.GUEST_FILES["etc/systemd/network/10-xencluster-netfront.link"]
    match, settings = link.split("[Link]")
    assert "[Match]\nDriver=vif\n" in match
    assert settings.strip() == "NamePolicy="
    assert "127.0.0.1 localhost" in guestimage.GUEST_FILES["etc/hosts"]


def test_the_guest_packages_are_small_and_have_no_kernel():
    assert {"systemd-sysv", "udev", "mdadm", "python3", "iproute2"} <= set(guestimage.GUEST_PACKAGES)
    assert not any(p.startswith("linux-image") for p in guestimage.GUEST_PACKAGES)


def test_the_guest_initramfs_loads_crc32c_before_the_filesystems():
    modules = guestimage.GUEST_MODULES
    for needed in ("xen-blkfront", "xen-netfront", "md-mod", "raid1", "ext4", "xfs"):
        assert needed in modules
    assert modules.index("crc32c_generic") < min(modules.index("ext4"), modules.index("xfs"))


def test_the_images_live_under_srv_xencluster_images():
    assert guestimage.GUEST_ARCHIVE == "srv/xencluster/images/debian12-guest.tar.zst"
    assert guestimage.GUEST_INITRD == "srv/xencluster/images/guest-initrd.gz"
    assert "debian12-guest" not in domu.PROBE_INITRD


# --- the guest init script -------------------------------------------------------------------


def test_guest_init_is_an_executable_busybox_script():
    text = guestimage.GUEST_INIT.read_text()
    assert text.startswith("#!/bin/busybox sh\n")
    assert guestimage.GUEST_INIT.stat().st_mode & 0o111
    assert 'mdadm --assemble --run "$ROOT_MD" "$@"' in text
    assert 'exec switch_root "$NEWROOT" "$init"' in text


def _init_shell(script: str, path: str | None = None) -> subprocess.CompletedProcess:
    """Run `script` in a POSIX sh that has sourced the guest init's functions (and nothing else)."""
    env = {"GUEST_INIT_FUNCTIONS_ONLY": "1", "PATH": path or "/usr/bin:/bin"}
    return subprocess.run(["sh", "-c", f". {guestimage.GUEST_INIT}\n{script}"], env=env,
                          capture_output=True, text=True, timeout=20)


needs_sh = pytest.mark.skipif(not shutil.which("sh"), reason="no POSIX sh")


@needs_sh
@pytest.mark.parametrize("cmdline, mode", [
    ("console=hvc0", "ro"), ("console=hvc0 rw", "rw"), ("ro rw", "rw"), ("rw quiet ro", "ro"),
    ("root=/dev/md0 rwx", "ro"),
])  # fmt: skip
def test_root_mode_is_the_last_ro_or_rw_word(cmdline, mode):
    proc = _init_shell(f'root_mode "{cmdline}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{mode}\n"


@needs_sh
def test_cmdline_arg_reads_the_last_value():
    line = "console=hvc0 init=/bin/sh init=/sbin/init.alt initx=1"
    proc = _init_shell(f'cmdline_arg init "{line}"; cmdline_arg nope "{line}" || echo absent')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["/sbin/init.alt", "absent"]


def _block_device() -> str | None:
    for path in sorted(Path("/dev").iterdir()):
        try:
            if stat.S_ISBLK(path.stat().st_mode):
                return str(path)
        except OSError:
            continue
    return None


@needs_sh
def test_present_legs_lists_block_devices_only(tmp_path):
    block = _block_device()
    if block is None:
        pytest.skip("no block device in /dev")
    (tmp_path / "file").write_text("")
    proc = _init_shell(f'LEGS="{tmp_path}/missing {block} {tmp_path}/file"; present_legs; echo "[$PRESENT]"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[{block}]\n"


def _counting_sleep(tmp_path: Path) -> str:
    fake = tmp_path / "sleep"
    fake.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/slept\n')
    fake.chmod(0o755)
    return f"{tmp_path}:/usr/bin:/bin"


@needs_sh
def test_wait_legs_gives_up_after_the_first_wait_when_no_leg_appears(tmp_path):
    proc = _init_shell(f'LEGS="{tmp_path}/xvda {tmp_path}/xvdb"; FIRST_WAIT=3; '
                       'if wait_legs; then echo found; else echo none; fi',
                       path=_counting_sleep(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "none\n"
    assert (tmp_path / "slept").read_text().split() == ["1", "1", "1"]


@needs_sh
def test_wait_legs_waits_a_little_more_for_the_missing_leg(tmp_path):
    block = _block_device()
    if block is None:
        pytest.skip("no block device in /dev")
    proc = _init_shell(f'LEGS="{block} {tmp_path}/xvdb"; FIRST_WAIT=30; OTHER_WAIT=2; '
                       'wait_legs && echo "[$PRESENT]"', path=_counting_sleep(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[{block}]\n"
    assert (tmp_path / "slept").read_text().split() == ["1", "1"]  # OTHER_WAIT, not FIRST_WAIT


@needs_sh
def test_fs_type_reads_the_superblock_magic(tmp_path):
    xfs = tmp_path / "xfs"
    xfs.write_bytes(b"XFSB" + bytes(4092))
    ext4 = tmp_path / "ext4"
    ext4.write_bytes(bytes(1080) + b"\x53\xef" + bytes(3014))
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(4096))
    if not shutil.which("hexdump"):
        pytest.skip("hexdump is not installed (busybox has it in the guest)")
    proc = _init_shell(f'fs_type {xfs}; fs_type {ext4}; echo "[$(fs_type {blank})]"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["xfs", "ext4", "[]"]


@pytest.mark.skipif(not shutil.which("mke2fs"), reason="mke2fs is not installed")
@needs_sh
def test_fs_type_recognises_a_real_ext4(tmp_path):
    if not shutil.which("hexdump"):
        pytest.skip("hexdump is not installed")
    image = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(image), "4M"], check=True)
    proc = _init_shell(f"fs_type {image}")
    assert proc.stdout == "ext4\n", proc.stderr


def test_guest_init_reports_every_failure_as_failed():
    text = guestimage.GUEST_INIT.read_text()
    assert 'say "FAILED: $*"' in text
    # each step that can fail ends in fail "..."; the shell never lets PID 1 exit
    for step in ("insmod", "mdadm --assemble", "mount -t $fstype", "no root disk", "cannot move"):
        assert any(step in line and "fail " in line for line in text.splitlines()), step
    assert "while true; do /bin/sh; done" in text
