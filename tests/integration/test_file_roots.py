"""The file_roots way: the master serves _modules/_states/_runners, saltutil.sync_* ships them.

The daemons and the salt/salt-run CLIs run on a Python without the installed
saltext-xencluster (see conftest.py), so nothing here can come from the
``salt.loader`` entry point.
"""

import pytest
from xc_helpers import entry_point_names
from xc_helpers import lvm_available
from xc_helpers import xl_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_daemons_do_not_see_the_entry_point(salt_only_python, tmp_path):
    assert "saltext.xencluster" not in entry_point_names(salt_only_python, tmp_path)


def test_sync_all_ships_modules_and_states(salt_minion, salt_cli):
    tgt = salt_minion.id
    before = salt_cli.run("sys.list_modules", minion_tgt=tgt)
    assert before.returncode == 0, before
    assert not [m for m in before.data if m.startswith("xencluster")]

    synced = salt_cli.run("saltutil.sync_all", minion_tgt=tgt)
    assert synced.returncode == 0, synced
    assert {"modules.xencluster_xl", "modules.xencluster_lvm"} <= set(synced.data["modules"])
    assert "states.xencluster_lvm" in synced.data["states"]

    # one compound job for both lists (probing an unavailable function inside a
    # compound job returns a traceback in Salt 3008.3, hence the separate probes)
    res = salt_cli.run("sys.list_modules,sys.list_state_modules", ",", minion_tgt=tgt)
    modules, states = res.data["sys.list_modules"], res.data["sys.list_state_modules"]
    # xencluster_lvm loads wherever lvm2 is installed, and its state with it
    assert ("xencluster_lvm" in modules) is lvm_available()
    assert ("xencluster_lvm" in states) is lvm_available()
    probe = salt_cli.run("xencluster_lvm.parse_size", "10G", minion_tgt=tgt)
    if lvm_available():
        assert probe.data == 10 * 1024**3
    else:
        assert "'xencluster_lvm' __virtual__ returned False" in str(probe.data)
    # these minions are no dom0s: the loader found xencluster_xl and its __virtual__ said no
    assert ("xencluster_xl" in modules) is xl_available()
    if not xl_available():
        probe = salt_cli.run("xencluster_xl.is_dom0", minion_tgt=tgt)
        assert probe.returncode != 0
        assert str(probe.data).startswith("'xencluster_xl' __virtual__ returned False: xencluster_xl: ")


def test_sync_runners_then_locate(salt_minion, salt_run_cli):
    before = salt_run_cli.run("xencluster.locate")
    # not there before the sync (salt-run still exits 0 for a missing runner)
    assert "'xencluster.locate' is not available." in before.stdout

    synced = salt_run_cli.run("saltutil.sync_runners")
    assert synced.returncode == 0, synced
    assert "runners.xencluster" in synced.data

    res = salt_run_cli.run("xencluster.locate", f"tgt={salt_minion.id}", "timeout=30")
    assert res.returncode == 0, res
    assert sorted(res.data) == ["double_runs", "errors", "guests", "no_answer", "unavailable"]
    assert res.data["double_runs"] == [] and res.data["no_answer"] == [] and res.data["errors"] == {}
    if xl_available():  # pragma: no cover - only on a real dom0
        assert res.data["unavailable"] == {}
    else:
        assert res.data["guests"] == {}
        reason = res.data["unavailable"][salt_minion.id]
        assert reason.startswith("'xencluster_xl' __virtual__ returned False")
