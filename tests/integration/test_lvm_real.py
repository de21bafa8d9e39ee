"""lv_present against real LVM: the dry run predicts exactly what LVM then does.

Needs root, lvm2 and loop devices; skipped otherwise. LVM only sees this
test's own loop devices (an lvm.conf in LVM_SYSTEM_DIR filters everything
else), keeps no backups, and does not activate anything (metadata only, no
device-mapper devices), so the host's own volumes are never touched.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from xc_helpers import salt_call

MiB = 1024**2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, LVM)"),
    pytest.mark.skipif(not shutil.which("lvm"), reason="lvm2 is not installed"),
    pytest.mark.skipif(not shutil.which("losetup"), reason="losetup is not installed"),
    pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="no loop devices"),
]

SLS = """\
{% set s = pillar["sizes"] %}
web1:
  xencluster_lvm.lv_present:
    - name: web1-disk0-a
    - vg: {{ pillar["vg"] }}
    - size: {{ s["web1"] }}
db1:
  xencluster_lvm.lv_present:
    - name: db1-disk0-a
    - vg: {{ pillar["vg"] }}
    - size: {{ s["db1"] }}
    - stripes: 2
    - stripe_size: 64k
web1-smaller:
  xencluster_lvm.lv_present:
    - name: web1-disk0-a
    - vg: {{ pillar["vg"] }}
    - size: 4M
    - require:
      - xencluster_lvm: web1
"""


def _run(argv, env):
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=60)


@pytest.fixture
def loop_vg(tmp_path):
    """A VG on two fresh 128 MiB loop devices, seen by nothing but this test."""
    vg = f"xct{uuid.uuid4().hex[:8]}"
    loops = []
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1", LVM_SYSTEM_DIR=str(tmp_path / "lvm"))
    try:
        for i in range(2):
            img = tmp_path / f"pv{i}.img"
            with open(img, "wb") as fh:
                fh.truncate(128 * MiB)
            loops.append(
                subprocess.run(
                    ["losetup", "--find", "--show", str(img)],
                    check=True, capture_output=True, text=True, timeout=30,
                ).stdout.strip()
            )  # fmt: skip
        accept = ", ".join(f'"a|^{loop}$|"' for loop in loops)
        (tmp_path / "lvm").mkdir()
        (tmp_path / "lvm" / "lvm.conf").write_text(
            "devices {\n"
            f'  filter = [ {accept}, "r|.*|" ]\n'
            f'  global_filter = [ {accept}, "r|.*|" ]\n'
            "  use_devicesfile = 0\n"
            "  obtain_device_list_from_udev = 0\n"
            "}\n"
            "global { activation = 0 }\n"
            "backup { backup = 0\n archive = 0 }\n"
        )
        _run(["pvcreate", *loops], env)
        _run(["vgcreate", vg, *loops], env)
        yield vg, {"LVM_SYSTEM_DIR": env["LVM_SYSTEM_DIR"]}
    finally:
        subprocess.run(["vgremove", "--force", vg], capture_output=True, env=env, check=False)
        if loops:
            subprocess.run(["pvremove", *loops], capture_output=True, env=env, check=False)
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)


def test_plan_matches_lvm(loop_vg, local_minion_config, tmp_path):
    vg, env = loop_vg
    conf, _root = local_minion_config
    (tmp_path / "empty" / "xc_lvm.sls").write_text(SLS)

    def apply(sizes, test):
        pillar = json.dumps({"vg": vg, "sizes": sizes})
        rc, data, err = salt_call(
            sys.executable, conf, "state.apply", "xc_lvm", f"pillar={pillar}", f"test={test}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert data is not None, err
        return {key.split("_|-")[1]: ret for key, ret in data.items()}

    def changes(ret):
        return {sid: r["changes"] for sid, r in ret.items()}

    first = {"web1": "10M", "db1": "10M"}
    dry = apply(first, True)
    assert {sid: r["result"] for sid, r in dry.items()} == {"web1": None, "db1": None, "web1-smaller": None}
    assert dry["web1"]["changes"] == {f"{vg}/web1-disk0-a": {"old": None, "new": {"size": 12 * MiB}}}
    # 10M = 3 extents, rounded to 4 for 2 stripes
    assert dry["db1"]["changes"] == {f"{vg}/db1-disk0-a": {"old": None, "new": {"size": 16 * MiB}}}

    real = apply(first, False)
    assert all(r["result"] is True for r in real.values()), real
    assert changes(real)["web1"] == dry["web1"]["changes"]
    assert changes(real)["db1"] == dry["db1"]["changes"]
    assert changes(real)["web1-smaller"] == {}  # never shrunk

    again = apply(first, False)
    assert all(r["result"] is True for r in again.values()), again
    assert changes(again) == {"web1": {}, "db1": {}, "web1-smaller": {}}

    grow = {"web1": "30M", "db1": "18M"}
    dry = apply(grow, True)
    assert dry["web1"]["changes"] == {
        f"{vg}/web1-disk0-a": {"old": {"size": 12 * MiB}, "new": {"size": 32 * MiB}}
    }
    # 18M = 5 extents: +1 rounded to +2 for the 2 stripes of the last segment
    assert dry["db1"]["changes"] == {
        f"{vg}/db1-disk0-a": {"old": {"size": 16 * MiB}, "new": {"size": 24 * MiB}}
    }
    real = apply(grow, False)
    assert all(r["result"] is True for r in real.values()), real
    assert changes(real)["web1"] == dry["web1"]["changes"]
    assert changes(real)["db1"] == dry["db1"]["changes"]

    rc, _data, err = salt_call(
        sys.executable, conf, "xencluster_lvm.lv_extend", vg, "web1-disk0-a", "4M",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert rc != 0 and "refusing to shrink" in err
