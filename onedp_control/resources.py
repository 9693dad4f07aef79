"""Files the package ships beside its code (config/, models/): found in the checkout when run
from it, else in colcon's install (share/onedp_control)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def share_file(relative: str) -> Path:
    local = PACKAGE_ROOT / relative
    if local.exists():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("onedp_control")) / relative
    except (ImportError, LookupError):
        return local


def resolve_model(path: str) -> Path:
    """A model path as given when it exists (relative to the working directory), else the
    package's shipped file of that name (`models/pnp_milk/onedp_s.pt`)."""
    given = Path(path)
    return given if given.is_absolute() or given.exists() else share_file(path)
