"""Helpers of the lab's provisioning tests (test_cluster_highstate.py, issue 6): the lab
master's event bus read from the test process, and what a guest leaves on a dom0."""

import contextlib
import time

import salt.config
import salt.utils.event

from lab.master import CONFIG_FILE

GUEST = "svc1"  # the lab pillar's provisioned guest, pinned to node1
REQUEST_TAG = "xencluster/guest/provision"


@contextlib.contextmanager
def master_bus():
    """A listening connection to the lab master's event bus (its sock_dir, on this host)."""
    opts = salt.config.client_config(str(CONFIG_FILE))
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        yield bus


def wait_event(bus, prefix, endings, timeout):
    """The data of the first event ``<prefix><ending>`` for one of ``endings``; AssertionError at timeout."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        event = bus.get_event(wait=5, tag=prefix, full=True)
        if not event:
            continue
        seen.append(event["tag"])
        if event["tag"][len(prefix):] in endings:
            return event["tag"][len(prefix):], event["data"]
    raise AssertionError(f"no event {prefix}{{{','.join(endings)}}} within {timeout} s; saw {seen[-20:]}")


def traces_script(guest):
    """Shell for a dom0: every trace of ``guest`` there, one line each (empty when there is none)."""
    return (
        f"lvs --noheadings -o vg_name,lv_name,lv_tags 2>/dev/null | grep -F ' {guest}.' | sed 's/^ */lv /';"
        # LIO straight from configfs (block backstores, iSCSI targets), not from the module under test
        f" ls -d /sys/kernel/config/target/core/*/{guest}.* /sys/kernel/config/target/iscsi/*:{guest}.*"
        " 2>/dev/null | sed 's/^/lio /';"
        f" iscsiadm -m node 2>/dev/null | grep -F ':{guest}.' | sed 's/^/node-record /';"
        f" ls /dev/xencluster 2>/dev/null | grep -F '{guest}.' | sed 's/^/path /';"
        f" test -e /etc/xen/xencluster/{guest}.cfg && echo config /etc/xen/xencluster/{guest}.cfg;"
        " true"
    )
