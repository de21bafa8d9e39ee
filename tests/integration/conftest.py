"""Integration tier: real salt-master / salt-minion / salt-call processes, 127.0.0.1 only.

Each way of shipping the extension is tested on its own:

* file_roots (``saltutil.sync_all``): the daemons run on a Python that sees
  salt but NOT the installed saltext-xencluster (no ``salt.loader`` entry
  point), so whatever they load came through the sync;
* the entry point of the editable install (``salt-call --local``, no sync);
* a non-editable ``pip install`` into a throwaway venv.
"""

import json
import pathlib
import subprocess
import sys
import sysconfig

import pytest
from xc_helpers import MODEL_DOM0
from xc_helpers import MODEL_GHOST
from xc_helpers import OUR_DIST
from xc_helpers import ROOT
from xc_helpers import TREES


@pytest.fixture(scope="session")
def salt_only_site(tmp_path_factory):
    """The venv's site-packages minus saltext-xencluster: symlinks to everything else."""
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path_factory.mktemp("salt-only-site")
    for entry in site.iterdir():
        if entry.name.startswith(OUR_DIST) or entry.name == "__pycache__":
            continue
        (farm / entry.name).symlink_to(entry)
    return farm


@pytest.fixture(scope="session")
def make_python(salt_only_site):
    """make_python(dir) -> a throwaway venv's python that imports salt but not saltext-xencluster."""

    def _make(dest):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
        python = dest / "bin" / "python"
        purelib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # appended after the venv's own site-packages, like --system-site-packages
        pathlib.Path(purelib, "zz-salt-only.pth").write_text(f"{salt_only_site}\n")
        return python

    return _make


@pytest.fixture(scope="session")
def salt_only_python(make_python, tmp_path_factory):
    return make_python(tmp_path_factory.mktemp("salt-only") / "venv")


@pytest.fixture(scope="session")
def salt_factories_config(salt_factories_config, salt_only_python, salt_only_site):
    # code_dir is put first on sys.path of every daemon: keep our dist out of it too.
    return {
        **salt_factories_config,
        "python_executable": str(salt_only_python),
        "code_dir": str(salt_only_site),
    }


@pytest.fixture(scope="session")
def file_roots(tmp_path_factory):
    """A file_roots dir holding this checkout's extension trees (symlinks)."""
    base = tmp_path_factory.mktemp("file_roots")
    for tree in TREES:
        (base / tree).symlink_to(ROOT / tree, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def salt_master(salt_factories, file_roots):
    master = salt_factories.salt_master_daemon(
        "xc-master", overrides={"file_roots": {"base": [str(file_roots)]}}
    )
    with master.started():
        yield master


@pytest.fixture(scope="session")
def salt_minion(salt_master):
    minion = salt_master.salt_minion_daemon("xc-minion")
    with minion.started():
        yield minion


@pytest.fixture(scope="session")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="session")
def salt_run_cli(salt_master):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture
def local_minion_config(tmp_path):
    """A fresh salt-call --local config: own root_dir, empty file_roots, no extension_modules."""
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(
        json.dumps(
            {
                "id": "xc-local",
                "root_dir": str(root),
                "file_client": "local",
                "file_roots": {"base": [str(empty)]},
                "pillar_roots": {"base": [str(empty)]},
            }
        )
    )
    return conf, root


# --- a master whose pillar holds the lab model, for the runner tests (verify, migrate) -------

@pytest.fixture(scope="session")
def model_pillar_roots(tmp_path_factory):
    """The frozen lab model (tests/unit/data) with node1/node2 mapped to the minion ids above."""
    import salt.utils.yaml  # pylint: disable=import-outside-toplevel

    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    raw["xencluster"]["nodes"]["node1"]["minion"] = MODEL_DOM0
    raw["xencluster"]["nodes"]["node2"]["minion"] = MODEL_GHOST
    base = tmp_path_factory.mktemp("model-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


@pytest.fixture(scope="session")
def model_master(salt_factories, file_roots, model_pillar_roots):
    """A master serving the extension and the model; its runners and xencluster_model synced."""
    master = salt_factories.salt_master_daemon(
        "xc-model-master",
        overrides={"file_roots": {"base": [str(file_roots)]}, "pillar_roots": {"base": [str(model_pillar_roots)]}},
    )
    with master.started():
        run = master.salt_run_cli(timeout=120)
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):  # the runner and xencluster_model
            res = run.run(sync)
            assert res.returncode == 0, res
        yield master


@pytest.fixture(scope="session")
def model_dom0(model_master):
    minion = model_master.salt_minion_daemon(MODEL_DOM0)
    with minion.started():
        res = model_master.salt_cli(timeout=120).run("saltutil.sync_modules", minion_tgt=MODEL_DOM0)
        assert res.returncode == 0, res
        yield minion
