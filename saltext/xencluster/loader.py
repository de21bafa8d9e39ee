"""Tell Salt's loader where the extension's modules, states and runners are.

The trees live at the top level of the checkout (``_modules``, ``_states``,
``_runners``) so the same tree also works when dropped into ``file_roots``.
An installed package maps them to ``saltext.xencluster.{modules,states,runners}``.
"""

import importlib.util
from pathlib import Path

_KINDS = {"modules": "_modules", "states": "_states", "runners": "_runners"}


def _locate(kind: str, checkout_dir: str) -> str:
    spec = importlib.util.find_spec(f"saltext.xencluster.{kind}")
    if spec is not None and spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    # Editable installs may not expose the mapped sub-package; fall back to
    # the checkout layout next to this package.
    return str(Path(__file__).resolve().parents[2] / checkout_dir)


def get_loader_dirs() -> dict:
    """Return ``{loader kind: [directory]}`` for Salt's ``salt.loader`` entry point."""
    return {kind: [_locate(kind, checkout)] for kind, checkout in _KINDS.items()}
