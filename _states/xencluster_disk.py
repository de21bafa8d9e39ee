"""
The udev rules that give every guest disk leg its stable path ``/dev/xencluster/<leg id>``.

.. code-block:: yaml

    xencluster-udev-leg-rules:
      xencluster_disk.rules_installed

A thin state over ``xencluster_disk.install_rules``: the file
``/etc/udev/rules.d/61-xencluster-legs.rules`` is written only when it
differs, and only then are udev's rules reloaded and block devices
re-triggered. ``test=True`` only says whether it would change.
"""

__virtualname__ = "xencluster_disk"


def __virtual__():
    if "xencluster_disk.install_rules" not in __salt__:
        return (False, "xencluster_disk state: the xencluster_disk execution module is not available")
    return __virtualname__


def rules_installed(name):
    """
    Ensure the udev rules of the stable leg paths are installed (idempotent).

    name
        A label (e.g. ``xencluster-udev-leg-rules``); the file is always
        ``/etc/udev/rules.d/61-xencluster-legs.rules``.

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_disk.rules_installed xencluster-udev-leg-rules test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    test = bool(__opts__["test"])
    try:
        res = __salt__["xencluster_disk.install_rules"](test=test)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"installing the udev rules of the stable leg paths failed: {exc}"
        return ret
    path = res["path"]
    if not res["changed"]:
        ret["result"] = True
        ret["comment"] = f"{path} is up to date"
        return ret
    change = {path: "written; udev rules reloaded, block devices re-triggered and settled"}
    if test:
        ret["result"] = None
        ret["changes"] = {path: "would be written; then udevadm control --reload, trigger and settle"}
        ret["comment"] = f"{path} would be written"
        return ret
    ret["result"] = True
    ret["changes"] = change
    ret["comment"] = f"{path} written"
    return ret
