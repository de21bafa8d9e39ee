"""xencluster_node execution module: one report per dom0, one call per tool, a failing part isolated."""

import pytest
from salt.exceptions import CommandExecutionError

from saltext.xencluster.modules import xencluster_node as node

FUNS = {
    "domains": "xencluster_xl.list_domains",
    "lvm": "xencluster_lvm.report",
    "lio": "xencluster_lio.exports",
    "sessions": "xencluster_iscsi.sessions",
    "links": "xencluster_disk.links",
}
ANSWERS = {
    "xencluster_xl.list_domains": {"web1": {"domid": 1, "type": "pvh", "memory": 128 * 1024**2, "vcpus": 1,
                                            "state": "blocked"}},
    "xencluster_lvm.report": {"pvs": {}, "vgs": {}, "lvs": {}},
    "xencluster_lio.exports": {"backstores": {}, "targets": {}},
    "xencluster_iscsi.sessions": [],
    "xencluster_disk.links": {},
}  # fmt: skip


class Counting:
    """A ``__salt__`` function that records its calls and answers (or raises) as told."""

    def __init__(self, name, answer):
        self.name, self.answer, self.calls = name, answer, 0

    def __call__(self, *args, **kwargs):
        assert not args and not kwargs, f"{self.name} called with arguments"
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def salt_funs():
    return {fun: Counting(fun, answer) for fun, answer in ANSWERS.items()}


@pytest.fixture
def configure_loader_modules(salt_funs):
    return {node: {"__salt__": salt_funs}}


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    conf = tmp_path / "xencluster"
    conf.mkdir()
    for name in ("web1.cfg", "db1.cfg", "notes.txt", "Bad_Name.cfg", "web1.cfg.bak"):
        (conf / name).write_text("name = 'x'\n")
    (conf / "dir.cfg").mkdir()
    monkeypatch.setattr(node, "CONFIG_DIR", str(conf))
    return conf


def test_parts_are_the_funs_of_the_other_modules():
    assert node.PARTS == FUNS


def test_report_calls_each_tool_once(salt_funs, config_dir):
    report = node.report()
    assert {fun: f.calls for fun, f in salt_funs.items()} == dict.fromkeys(ANSWERS, 1)
    assert report == {**{part: ANSWERS[fun] for part, fun in FUNS.items()}, "configs": ["db1", "web1"]}


def test_a_failing_part_is_isolated(salt_funs, config_dir):
    salt_funs["xencluster_lio.exports"].answer = CommandExecutionError("configfs is not mounted")
    salt_funs["xencluster_lvm.report"].answer = RuntimeError()
    report = node.report()
    assert report["lio"] == {"error": "xencluster_lio.exports: configfs is not mounted"}
    assert report["lvm"] == {"error": "xencluster_lvm.report: RuntimeError"}
    assert report["domains"] == ANSWERS["xencluster_xl.list_domains"] and report["configs"] == ["db1", "web1"]
    assert all(f.calls == 1 for f in salt_funs.values())


def test_a_module_that_is_not_loaded_is_that_parts_error(salt_funs, config_dir):
    del salt_funs["xencluster_lio.exports"]  # e.g. no rtslib-fb on this dom0
    report = node.report()
    assert report["lio"]["error"].startswith("xencluster_lio.exports is not available")
    assert report["sessions"] == [] and set(report) == {*FUNS, "configs"}


def test_configs_without_the_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(node, "CONFIG_DIR", str(tmp_path / "missing"))
    assert node.configs() == []


def test_configs_that_cannot_be_read_is_that_parts_error(salt_funs, monkeypatch):
    def boom(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(node.os, "listdir", boom)
    report = node.report()
    assert report["configs"]["error"].startswith("configs: ") and "Permission denied" in report["configs"]["error"]
    assert report["lvm"] == ANSWERS["xencluster_lvm.report"]


@pytest.mark.parametrize(
    "content, loads",
    [("control_d\n", True), ("\n", False), (None, False)],
)
def test_virtual_only_on_a_dom0(tmp_path, monkeypatch, content, loads):
    caps = tmp_path / "capabilities"
    if content is not None:
        caps.write_text(content)
    monkeypatch.setattr(node, "CAPABILITIES", str(caps))
    result = node.__virtual__()
    if loads:
        assert result == "xencluster_node"
    else:
        assert result[0] is False and "not a Xen dom0" in result[1]
