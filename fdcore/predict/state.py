"""The on-disk state of an output folder: the writer lock, the binding metadata, and the work directories.

    OUT_DIR/.lock                       fcntl.flock'ed by the writing process (released by the kernel when it dies)
    OUT_DIR/.fdcore-predict/run.json    the binding: everything that determines the scores
    OUT_DIR/.fdcore-predict/rows-*.jsonl the work logs (one per process)
    OUT_DIR/.fdcore-predict.new/        an --overwrite run in progress; swapped in only when it completes
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from fdcore.fileio import swap_in_directory, write_text_atomic
from fdcore.errors import FdcoreError

LOCK_FILE = ".lock"
WORK_DIR = ".fdcore-predict"
STAGING_DIR = ".fdcore-predict.new"
RETIRED_DIR = ".fdcore-predict.old"
BINDING_FILE = "run.json"
FINAL_FILES = ("predictions.csv", "errors.csv", "image_info.csv", "predictions.meta.json")


class PredictError(FdcoreError):
    """A prediction run that cannot start or continue; the message says what to do."""


class OutputLock:
    """An exclusive ``flock`` on ``OUT_DIR/.lock``; a second writer fails at once with the holder's pid."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> None:
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(descriptor, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(descriptor)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise PredictError(f"{self.path.parent} is locked by pid {holder} (another fdcore predict is "
                                       "writing there); wait for it to finish or choose another --out") from exc
                raise
            # The holder unlinks the file before unlocking (release): a lock won on an unlinked file is no lock.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Unlock and remove the lock file (no stale ``.lock`` is left behind, even after a refused run)."""
        if self._descriptor is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


def read_binding(work_dir: Path) -> dict | None:
    path = Path(work_dir) / BINDING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PredictError(f"{path} is corrupt ({exc}); rerun with --overwrite to start again") from exc


def write_binding(work_dir: Path, binding: dict) -> None:
    write_text_atomic(Path(work_dir) / BINDING_FILE, json.dumps(binding, indent=2, sort_keys=True) + "\n")


def binding_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two bindings (nested keys joined with '.')."""
    differences = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            before, after = dict(enumerate(before)), dict(enumerate(after))
        if isinstance(before, dict) and isinstance(after, dict):
            differences.extend(binding_differences(before, after, name + "."))
        elif before != after:
            differences.append(f"{name}: was {_short(before)}, now {_short(after)}")
    return differences


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def prepare_work_dir(out_dir: Path, binding: dict, overwrite: bool) -> Path:
    """The work directory this run appends to, checked against (or initialised with) ``binding``.

    Without ``overwrite``, an existing binding must match exactly or the run is refused. With ``overwrite``, a
    fresh staging directory is used; the previous results stay untouched until :func:`promote` swaps it in.
    """
    out_dir = Path(out_dir)
    binding = json.loads(json.dumps(binding))  # compare what is stored (tuples become lists)
    if not (out_dir / WORK_DIR).exists() and (out_dir / RETIRED_DIR).exists():
        # Killed inside promote(): a staging directory is only promoted once complete, so finish the swap.
        source = STAGING_DIR if (out_dir / STAGING_DIR).exists() else RETIRED_DIR
        os.replace(out_dir / source, out_dir / WORK_DIR)
    for leftover in (STAGING_DIR, RETIRED_DIR):  # from a killed earlier run; we hold the lock, nobody uses them
        if leftover == STAGING_DIR and not overwrite:
            continue
        shutil.rmtree(out_dir / leftover, ignore_errors=True)
    if overwrite:
        staging = out_dir / STAGING_DIR
        staging.mkdir()
        write_binding(staging, binding)
        return staging
    work_dir = out_dir / WORK_DIR
    existing = read_binding(work_dir)
    if existing is None:
        foreign = [name for name in FINAL_FILES if (out_dir / name).exists()]
        if foreign:
            raise PredictError(f"{out_dir} already holds {', '.join(foreign)} from a run fdcore cannot resume "
                               "(no .fdcore-predict/run.json); pass --overwrite to replace them or choose another "
                               "--out")
        work_dir.mkdir(exist_ok=True)
        write_binding(work_dir, binding)
        return work_dir
    differences = binding_differences(existing, binding)
    if differences:
        listing = "\n  ".join(differences)
        raise PredictError(f"{out_dir} holds results made with different settings, so they cannot be resumed:\n  "
                           f"{listing}\nPass --overwrite to score everything again with the new settings (the old "
                           "results stay readable until the new run completes), or choose another --out.")
    return work_dir


def promote(out_dir: Path, staging: Path) -> Path:
    """Make a completed --overwrite staging directory the work directory (old one removed)."""
    out_dir = Path(out_dir)
    work_dir = out_dir / WORK_DIR
    if Path(staging) == work_dir:
        return work_dir
    # a fixed retired name: prepare_work_dir finishes a swap that a kill interrupted between the two renames
    return swap_in_directory(staging, work_dir, retired=out_dir / RETIRED_DIR)
