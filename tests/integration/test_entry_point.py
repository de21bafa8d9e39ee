"""The entry-point way: the editable install in the venv, salt-call --local, no sync at all."""

import sys

import pytest
from xc_helpers import ROOT
from xc_helpers import entry_point_names
from xc_helpers import lvm_available
from xc_helpers import salt_call
from xc_helpers import xl_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_venv_has_the_entry_point(tmp_path):
    assert "saltext.xencluster" in entry_point_names(sys.executable, tmp_path)


def test_get_loader_dirs_of_the_editable_install():
    from saltext.xencluster.loader import get_loader_dirs  # pylint: disable=import-outside-toplevel

    assert get_loader_dirs() == {
        "modules": [str(ROOT / "_modules")],
        "states": [str(ROOT / "_states")],
        "runners": [str(ROOT / "_runners")],
    }


def test_salt_call_local_lists_them_without_sync(local_minion_config, tmp_path):
    conf, root = local_minion_config
    rc, modules, err = salt_call(sys.executable, conf, "sys.list_modules", cwd=tmp_path)
    assert rc == 0, err
    rc, states, err = salt_call(sys.executable, conf, "sys.list_state_modules", cwd=tmp_path)
    assert rc == 0, err

    assert ("xencluster_lvm" in modules) is lvm_available()
    assert ("xencluster_lvm" in states) is lvm_available()
    assert ("xencluster_xl" in modules) is xl_available()
    if not xl_available():
        # found through the entry point, refused by its own __virtual__
        rc, _data, err = salt_call(sys.executable, conf, "xencluster_xl.is_dom0", cwd=tmp_path)
        assert rc != 0
        assert "'xencluster_xl' __virtual__ returned False: xencluster_xl: " in err
    if not lvm_available():
        rc, _data, err = salt_call(sys.executable, conf, "xencluster_lvm.parse_size", "1G", cwd=tmp_path)
        assert "'xencluster_lvm' __virtual__ returned False" in err

    # nothing came through a sync: no extension_modules were written
    extmods = root / "var" / "cache" / "salt" / "minion" / "extmods"
    assert list(extmods.rglob("*.py")) == []
