"""Unit tier helpers: recorded tool output and a fake ``cmd.run_all``."""

import pathlib

import pytest

RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings"


class FakeRunAll:
    """Stands in for ``cmd.run_all``: answers by command name, records every call.

    ``outputs`` maps a command name (``argv[0]``, e.g. ``"lvs"``) or a full argv
    tuple to a stdout string or to a ``{"retcode", "stdout", "stderr"}`` dict.
    ``effects`` maps a command name to a callable run after it (e.g. to make
    the next ``lvs`` show what ``lvcreate`` did). It fails the test on anything
    but an argument list with python_shell=False.
    """

    def __init__(self, outputs):
        self.outputs = dict(outputs)
        self.effects = {}
        self.calls = []

    def __call__(self, argv, python_shell=None, **kwargs):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        assert python_shell is False, "commands must run with python_shell=False"
        self.calls.append(list(argv))
        out = self.outputs.get(tuple(argv), self.outputs.get(argv[0]))
        if out is None:
            raise AssertionError(f"unexpected command: {argv}")
        if isinstance(out, str):
            out = {"retcode": 0, "stdout": out}
        res = {"pid": 1, "stdout": "", "stderr": "", **out}
        if res["retcode"] == 0 and argv[0] in self.effects:
            self.effects[argv[0]](argv)
        return res

    def commands(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def run_all():
    """A fresh FakeRunAll; put outputs in ``run_all.outputs``."""
    return FakeRunAll({})


@pytest.fixture
def recording():
    """recording("lvm", "bookworm-3pv-2lv", "lvs") -> the recorded stdout (str)."""

    def _read(tool, name, command):
        return (RECORDINGS / tool / name / f"{command}.out").read_text()

    return _read
