"""The probe guest initramfs builder (lab/domu.py): dependency order and the cpio archive."""

import shutil
import stat
import subprocess

import pytest

from lab import domu

MODINFO = {
    "raid1": ("/lib/modules/k/kernel/drivers/md/raid1.ko", ["md-mod"]),
    "md-mod": ("/lib/modules/k/kernel/drivers/md/md-mod.ko", []),
    "xen-blkfront": ("/lib/modules/k/kernel/drivers/block/xen-blkfront.ko", []),
    "xen-netfront": ("/lib/modules/k/kernel/drivers/net/xen-netfront.ko", []),
}


def test_module_order_puts_dependencies_first_once():
    order = domu.module_order(["xen-blkfront", "raid1", "md-mod"], MODINFO.__getitem__)
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == ["xen-blkfront.ko", "md-mod.ko", "raid1.ko"]


def test_probe_modules_include_the_network_frontend():
    order = domu.module_order(domu.PROBE_MODULES, MODINFO.__getitem__)
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == ["xen-blkfront.ko", "xen-netfront.ko", "md-mod.ko", "raid1.ko"]


def test_module_order_refuses_a_cycle():
    cyclic = {"a": ("/a.ko", ["b"]), "b": ("/b.ko", ["a"])}
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        domu.module_order(["a"], cyclic.__getitem__)


def test_parse_ldd_keeps_absolute_paths_only():
    out = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
    )
    assert domu.parse_ldd(out) == [
        "/lib/x86_64-linux-gnu/libudev.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio is not installed")
def test_newc_archive_unpacks_with_real_cpio(tmp_path):
    archive = domu.newc_archive([
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho odd-length\n"),
        ("etc", stat.S_IFDIR | 0o755, b""),
        ("etc/empty", stat.S_IFREG | 0o644, b""),
        ("bin/link", stat.S_IFLNK | 0o777, b"tool"),
    ])
    assert len(archive) % 4 == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=out, check=True)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho odd-length\n"
    assert (out / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (out / "etc" / "empty").read_bytes() == b""
    assert (out / "bin" / "link").readlink().as_posix() == "tool"
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/tool", "etc", "etc/empty", "bin/link"]


def _rootfs(tmp_path):
    root = tmp_path / "rootfs"
    for inside, data in {
        "usr/bin/busybox": b"BUSYBOX",
        "usr/sbin/mdadm": b"MDADM",
        "usr/lib/x86_64-linux-gnu/libc.so.6": b"LIBC",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": b"LD",
        "usr/lib/modules/k/raid1.ko": b"RAID1",
    }.items():
        (root / inside).parent.mkdir(parents=True, exist_ok=True)
        (root / inside).write_bytes(data)
    return root


def test_probe_entries_place_files_where_the_guest_looks_for_them(tmp_path):
    root = _rootfs(tmp_path)
    files = {
        "/bin/busybox": "/usr/bin/busybox",
        "/sbin/mdadm": "/usr/sbin/mdadm",
        "/lib/x86_64-linux-gnu/libc.so.6": "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2": "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    }
    entries = domu.probe_entries(root, files, ["/usr/lib/modules/k/raid1.ko"], b"#!/bin/busybox sh\n")
    by_path = {path: (mode, data) for path, mode, data in entries}
    assert by_path["lib64/ld-linux-x86-64.so.2"][1] == b"LD"
    assert stat.S_ISDIR(by_path["lib64"][0]) and stat.S_ISDIR(by_path["lib/x86_64-linux-gnu"][0])
    assert by_path["lib/modules/raid1.ko"][1] == b"RAID1"
    assert by_path["lib/modules/order"][1] == b"raid1.ko\n"
    assert by_path["init"][0] == stat.S_IFREG | 0o755
    paths = [p for p, _, _ in entries]
    assert len(paths) == len(set(paths))
    # every parent directory comes before what it holds
    for i, path in enumerate(paths):
        if "/" in path:
            assert path.rsplit("/", 1)[0] in paths[:i], path


def test_probe_entries_refuse_a_symlink_source(tmp_path):
    root = _rootfs(tmp_path)
    (root / "lib64").mkdir()
    (root / "lib64" / "ld.so").symlink_to("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    with pytest.raises(ValueError, match="not a regular file"):
        domu.probe_entries(root, {"/lib64/ld.so": "/lib64/ld.so"}, [], b"")


def test_probe_init_script_mirrors_and_beats():
    text = domu.PROBE_INIT.read_text()
    assert text.startswith("#!/bin/busybox sh\n")
    assert "--bitmap=internal" in text and "HB $n" in text
    assert domu.PROBE_INIT.stat().st_mode & 0o111


def test_probe_init_script_brings_up_the_network_only_when_asked():
    text = domu.PROBE_INIT.read_text()
    assert "probe_arg probe.ip" in text and "probe_arg probe.peer" in text
    assert 'ip addr add "$addr" dev eth0' in text and "ip link set eth0 up" in text
    assert "ping -c 1 -W 1" in text
    # the heartbeat keeps its "HB <n> " prefix, then the guest's clock; the net status goes at the end
    assert 'msg="HB $n t=$WALL md=$MDLINE"' in text and 'msg="$msg$NET"' in text


def _probe_shell(script: str, path: str | None = None) -> subprocess.CompletedProcess:
    """Run `script` in a POSIX sh that has sourced the probe init's functions (and nothing else)."""
    env = {"PROBE_FUNCTIONS_ONLY": "1", "PATH": path or "/usr/bin:/bin"}
    return subprocess.run(["sh", "-c", f". {domu.PROBE_INIT}\n{script}"], env=env,
                          capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(not shutil.which("sh"), reason="no POSIX sh")
def test_probe_arg_reads_the_kernel_command_line():
    line = "console=hvc0 loglevel=4 probe.ip=10.20.0.2/24 probe.peer=10.20.0.3"
    proc = _probe_shell(f'probe_arg probe.ip "{line}"; probe_arg probe.peer "{line}"; '
                        f'probe_arg probe.nope "{line}" || echo absent; probe_arg probe.ip "probe.ipx=1" || echo absent')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["10.20.0.2/24", "10.20.0.3", "absent", "absent"]


@pytest.mark.skipif(not shutil.which("sh"), reason="no POSIX sh")
@pytest.mark.parametrize("ping_rc, word", [(0, " net=ok"), (1, " net=fail")])
def test_net_status_is_one_ping_with_a_one_second_timeout(tmp_path, ping_rc, word):
    fake = tmp_path / "ping"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nexit {ping_rc}\n')
    fake.chmod(0o755)
    proc = _probe_shell('net_status 10.20.0.3; printf "HB 7 md=x%s\\n" "$NET"', path=f"{tmp_path}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"HB 7 md=x{word}\n"
    assert (tmp_path / "args").read_text().split() == ["-c", "1", "-W", "1", "10.20.0.3"]


# `busybox adjtimex` (1.35.0, Debian 12 busybox-static, the probe's) as it prints with no options.
ADJTIMEX = """    mode:         0
-o  offset:       0 us
-f  freq.adjust:  0 (65536 = 1ppm)
    maxerror:     16000000
    esterror:     16000000
    status:       64 (UNSYNC)
-p  timeconstant: 2
    precision:    1 us
    tolerance:    32768000
-t  tick:         10000 us
    time.tv_sec:  1795537038
    time.tv_usec: 2901
    return value: 5 (clock not synchronized)
"""


@pytest.mark.skipif(not shutil.which("sh"), reason="no POSIX sh")
@pytest.mark.parametrize("usec, shown", [("2901", "002901"), ("0", "000000"), ("999999", "999999")])
def test_wall_clock_is_seconds_and_zero_padded_microseconds_from_adjtimex(tmp_path, usec, shown):
    fake = tmp_path / "adjtimex"
    fake.write_text(f"#!/bin/sh\ncat <<'END'\n{ADJTIMEX.replace('tv_usec: 2901', 'tv_usec: ' + usec)}END\n")
    fake.chmod(0o755)
    proc = _probe_shell('wall_clock; echo "$WALL"', path=f"{tmp_path}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"1795537038.{shown}\n"


def test_the_probe_beats_every_two_seconds():
    loop = domu.PROBE_INIT.read_text().split("while true; do", 1)[1]
    assert "\n  sleep 2\ndone" in loop


# /proc/mdstat in the probe (Linux 6.1), the array clean, then resyncing after a re-add.
MDSTAT_CLEAN = """Personalities : [raid1]
md0 : active raid1 xvdb[1] xvda[0]
      64512 blocks super 1.2 [2/2] [UU]
      bitmap: 0/1 pages [0KB], 65536KB chunk

unused devices: <none>
"""
MDSTAT_DEGRADED = """Personalities : [raid1]
md0 : active raid1 xvda[0]
      64512 blocks super 1.2 [2/1] [U_]
      bitmap: 1/1 pages [4KB], 65536KB chunk

unused devices: <none>
"""


@pytest.mark.skipif(not shutil.which("sh"), reason="no POSIX sh")
@pytest.mark.parametrize("mdstat, line", [
    (MDSTAT_CLEAN, " 64512 blocks super 1.2 [2/2] [UU]"),
    (MDSTAT_DEGRADED, " 64512 blocks super 1.2 [2/1] [U_]"),
    ("Personalities : [raid1]\nunused devices: <none>\n", ""),
])  # fmt: skip
def test_md_line_is_the_arrays_status_line_squeezed_by_the_shell_alone(tmp_path, mdstat, line):
    (tmp_path / "mdstat").write_text(mdstat)
    proc = _probe_shell(f'md_line {tmp_path / "mdstat"}; echo "[$MDLINE]"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[{line}]\n"
