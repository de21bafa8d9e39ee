"""tests/lab_cluster/lanes.py: the two lab lanes never share a lab, a port or a test."""

import importlib.util
import sys
from pathlib import Path

import pytest

LANES_PY = Path(__file__).resolve().parents[1] / "lab_cluster" / "lanes.py"


@pytest.fixture
def lanes(monkeypatch):
    for name in ("XENCLUSTER_LAB", "XENCLUSTER_LAB_CACHE", "XENCLUSTER_LAB2_SSH_BASE",
                 "XENCLUSTER_LAB2_PUBLISH_PORT", "XENCLUSTER_LAB2_RET_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("lab_lanes", LANES_PY)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_second_lane_has_its_own_lab_and_ports_and_shares_the_first_labs_cache(lanes, monkeypatch):
    monkeypatch.setenv("XENCLUSTER_LAB", "/var/tmp/xl")
    parts, cluster = lanes.lanes()
    assert parts.lab_env is None  # the caller's lab, as configured
    env = lanes.lane_env(cluster)
    assert env["XENCLUSTER_LAB"] == "/var/tmp/xl-2" and env["XENCLUSTER_LAB_CACHE"] == "/var/tmp/xl/cache"
    ports = {int(env[k]) for k in ("XENCLUSTER_LAB_PUBLISH_PORT", "XENCLUSTER_LAB_RET_PORT")}
    assert ports.isdisjoint({4505, 4506}) and len(ports) == 2
    # node N listens on base+N: the second lab's nodes 1..8 stay clear of the first's (2220+N)
    assert int(env["XENCLUSTER_LAB_SSH_BASE"]) >= 2220 + 8


def test_every_lab_module_runs_in_exactly_one_lane(lanes):
    parts, cluster = lanes.lanes()
    whole = Path(cluster.targets[0])
    assert cluster.targets == (str(whole),) and whole.name == "test_cluster_highstate.py"
    assert parts.targets == (str(whole.parent), f"--ignore={whole}")
    argv = lanes.pytest_argv(parts, ["-q"])
    assert argv[1:3] == ["-m", "pytest"] and argv[-1] == "-q" and "-m lab" in " ".join(argv[3:])


def test_the_closing_summary_is_pytests_short_summary_or_its_last_line(lanes):
    lines = ["a\n", "== short test summary info ==\n", "FAILED x\n", "1 failed\n"]
    assert lanes.summary(lines) == lines[1:]
    assert lanes.summary(["x\n", "3 passed in 1s\n"]) == ["3 passed in 1s\n"]
    assert lanes.summary([]) == []


class FakePytest:
    """A lane's pytest: prints one line, exits with the next code."""

    codes: list = []
    envs: list = []

    def __init__(self, argv, cwd, env, **kwargs):
        self.code = FakePytest.codes.pop(0)
        FakePytest.envs.append(env)
        self.stdout = iter([f"exit {self.code}\n"])

    def wait(self):
        return self.code

    def poll(self):
        return self.code


def test_the_status_is_the_first_failing_lanes(lanes, monkeypatch, capsys):
    FakePytest.codes, FakePytest.envs = [1, 0], []
    monkeypatch.setattr(lanes.subprocess, "Popen", FakePytest)
    booted = []
    assert lanes.run_lanes([], boot_lane=lambda lane: booted.append(lane.name)) == 1
    out = capsys.readouterr().out
    assert "[cluster] exit 0" in out and "[parts] exit 1" in out
    assert "lane parts: exit 1" in out
    assert booted == ["parts", "cluster"]
    # each session takes over the cluster booted for it
    assert [env["XENCLUSTER_LAB_FRESH"] for env in FakePytest.envs] == ["1", "1"]


def test_a_lane_whose_cluster_does_not_boot_fails_and_the_other_still_runs(lanes, monkeypatch, capsys):
    FakePytest.codes, FakePytest.envs = [0], []
    monkeypatch.setattr(lanes.subprocess, "Popen", FakePytest)

    def boot(lane):
        if lane.name == "cluster":  # the second lane
            raise lanes.LaneError("[cluster] python -m lab master exited 1")

    assert lanes.run_lanes([], boot_lane=boot) == 3
    out = capsys.readouterr().out
    assert "lane cluster: exit 3" in out and "lab master exited 1" in out and "[parts] exit 0" in out


def test_both_labs_are_stopped_and_wiped_at_the_end_unless_kept(lanes, monkeypatch):
    calls = []
    monkeypatch.setattr(lanes, "run_lab", lambda lane, *argv, check=True: calls.append((lane.name, argv)))
    lanes.stop_all()
    assert calls == [(name, ("down", "--hard", "--wipe")) for name in ("parts", "cluster")]
    calls.clear()
    monkeypatch.setenv("XENCLUSTER_LAB_KEEP", "1")
    lanes.stop_all()
    assert calls == []
