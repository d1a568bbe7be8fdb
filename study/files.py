"""Atomic file writes: every table, record and checkpoint the toolkit leaves appears complete or not at all.

A file is written to a temporary name in its own folder, flushed and fsynced, then renamed over the final
name (atomic on POSIX filesystems), and the folder is fsynced so the rename survives a power cut. A process
killed at any point leaves the previous file, or none, never a truncated one a later stage would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pandas as pd

TEMPORARY_SUFFIX = ".tmp"  # readers ignore names that start with "." and end with this


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(file)` on a temporary binary file, then move it to `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: str | os.PathLike) -> None:
    """Persist a folder's entries (a rename); a no-op where the filesystem cannot fsync folders."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Pretty, key-sorted JSON, written atomically."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda file: file.write(text.encode()))


def write_table(table: pd.DataFrame, path: str | os.PathLike, *, csv: bool = True) -> Path:
    """A Parquet table (and its CSV twin beside it), each written atomically."""
    path = Path(path)
    atomic_write(path, lambda file: table.to_parquet(file, index=False))
    if csv:
        atomic_write(path.with_suffix(".csv"), lambda file: file.write(table.to_csv(index=False).encode()))
    return path
