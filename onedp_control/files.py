"""Output paths: checked before the work starts, written whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from onedp_control.errors import ConfigError


class OutputPathError(ConfigError):
    """An output that cannot be written; the message names the path."""


def check_output_path(path: Path, overwrite: bool, directory: bool) -> None:
    """Fail before any work is done if `path` (a directory or a file) cannot be created."""
    if path.exists():
        if path.is_dir() != directory:
            kind = "a directory" if path.is_dir() else "a file"
            raise OutputPathError(f"{path}: exists and is {kind}")
        if not overwrite:
            raise OutputPathError(f"{path}: already exists (pass --overwrite to replace it)")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputPathError(f"{path}: cannot create it, {ancestor} is not a directory")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputPathError(f"{path}: cannot create it, {ancestor} is not writable")
            break


def write_json_atomic(path: Path, payload: dict) -> None:
    check_output_path(path, overwrite=True, directory=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
