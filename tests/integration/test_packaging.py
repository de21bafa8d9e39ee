"""A non-editable install: build the wheel offline, install it into a throwaway venv.

The throwaway venv sees salt (and everything else of the project venv) but
not the editable saltext-xencluster, like ``--system-site-packages`` would
(see conftest.py ``make_python``). The wheel is built from a copy of the
sources, so no build/ or egg-info appears in the checkout.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from xc_helpers import ROOT
from xc_helpers import lvm_available
from xc_helpers import salt_call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "saltext", "_modules", "_states", "_runners")
FILES = {
    "modules": {"__init__.py", "xencluster_lvm.py", "xencluster_xl.py", "xencluster_node.py"},
    "states": {"__init__.py", "xencluster_lvm.py"},
    "runners": {"__init__.py", "xencluster.py"},
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("saltext_xencluster-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, files in FILES.items():
        assert {f"saltext/xencluster/{kind}/{f}" for f in files} <= names, sorted(names)
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points[0]).decode()
    assert "[salt.loader]" in text
    assert "saltext.xencluster = saltext.xencluster.loader:get_loader_dirs" in text


@pytest.fixture(scope="module")
def installed(wheel, make_python, tmp_path_factory):
    python = make_python(tmp_path_factory.mktemp("throwaway") / "venv")
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", str(wheel)],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def test_loader_dirs_point_into_the_installed_package(installed, tmp_path):
    out = subprocess.run(
        [installed, "-c", "import json, sysconfig; from saltext.xencluster.loader import get_loader_dirs; "
         "print(json.dumps([get_loader_dirs(), sysconfig.get_paths()['purelib']]))"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    dirs, purelib = json.loads(out)
    assert sorted(dirs) == sorted(FILES)
    for kind, files in FILES.items():
        (path,) = dirs[kind]
        assert path == f"{purelib}/saltext/xencluster/{kind}"
        assert files <= {p.name for p in pathlib.Path(path).iterdir()}
        assert not path.startswith(str(ROOT))


def test_salt_call_uses_the_installed_package(installed, local_minion_config, tmp_path):
    conf, _root = local_minion_config
    rc, modules, err = salt_call(installed, conf, "sys.list_modules", cwd=tmp_path)
    assert rc == 0, err
    assert ("xencluster_lvm" in modules) is lvm_available()
    rc, _data, err = salt_call(installed, conf, "xencluster_xl.is_dom0", cwd=tmp_path)
    assert "'xencluster_xl' __virtual__ returned False: xencluster_xl: " in err or rc == 0
