"""Atomic file writes: readers see the old file or the new one, never a torn or empty one (the one place for it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _sync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX: fsync the directory); a no-op where that is not possible."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def swap_in_directory(staging, target, retired=None) -> Path:
    """Rename the finished directory ``staging`` to ``target``. An existing ``target`` is first moved to ``retired``
    (a fresh name beside it when None) and removed only after the swap succeeded; if the swap fails it is put back.
    A reader sees the old directory or the new one, never a mix; ``retired`` lets a caller that is killed between the
    two renames finish the swap on its next start (predict does)."""
    staging, target = Path(staging), Path(target)
    moved_aside = None
    if target.exists() or target.is_symlink():
        moved_aside = Path(retired) if retired is not None else \
            Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".previous", dir=target.parent)) / target.name
        os.replace(target, moved_aside)
    try:
        os.replace(staging, target)
    except BaseException:
        if moved_aside is not None:
            os.replace(moved_aside, target)
            if retired is None:
                shutil.rmtree(moved_aside.parent, ignore_errors=True)
        raise
    _sync_directory(target.parent)
    if moved_aside is not None:
        shutil.rmtree(moved_aside if retired is not None else moved_aside.parent, ignore_errors=True)
    return target


@contextlib.contextmanager
def replace_dir_atomic(target, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory in a staging directory beside ``target`` (yielded) and swap it in when the block succeeds,
    so ``target`` is either its old self or complete, never partial. The staging directory is removed on any
    failure. With ``overwrite=False`` an existing ``target`` (even one that appeared meanwhile) is a
    ``FileExistsError`` and nothing is replaced. Every "stage a directory, then swap it in" goes through here or
    :func:`swap_in_directory`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        if not overwrite and (target.exists() or target.is_symlink()):
            raise FileExistsError(f"{target} appeared while it was being written; nothing was replaced")
        swap_in_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
