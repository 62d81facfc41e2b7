"""Listing the images under a root folder without ever leaving it, blocking, or looping.

Rules (each refusal has a stable reason code, documented in docs/predict.md):

* real sub-directories are entered (each ``(device, inode)`` once, so bind-mount cycles terminate);
* a symbolic link to a regular file inside the root is scored under the link's own name; a link whose target lies
  outside the root is ``symlink_outside_root``; links to directories are never followed (``directory_symlink``, or
  ``symlink_outside_root`` when the target is outside), so link loops cannot happen; dangling links are
  ``broken_symlink`` and self-referencing chains ``symlink_loop``;
* FIFOs, sockets and devices (directly or through a link) are ``not_regular_file``: they are never opened;
* names that are not valid UTF-8 are ``undecodable_filename`` (reported with each bad byte written ``\\xNN``);
* regular files whose extension is not an image extension (``.txt``, ``.DS_Store``...) and macOS ``._*``
  companions are listed as *ignored* (``ignored_extension``, ``appledouble_companion``): reported, but they do not
  make a run partial.

Nothing is read here except directory entries and ``stat`` results; opening and decoding is
:func:`fdcore.images.open_image_file`'s job (given ``Candidate.root``, it re-walks the path from the root's descriptor
without following any link, so a folder swapped for a link between listing and reading leads nowhere).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Iterable

from fdcore.images import IMAGE_EXTENSIONS, REFUSED_IMAGE_EXTENSIONS

# Codes that describe files which are not images by name: reported, but not "skipped images".
IGNORED_CODES = frozenset({"ignored_extension", "appledouble_companion"})


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An image to score: ``name`` is its key (a folder's POSIX path relative to the root; a manifest's id or
    location), ``path`` the resolved file, ``root`` the resolved folder it was listed under (opening walks from there
    without following links), ``uri`` the URL of a remote image (fetched by :mod:`fdcore.remote`; its size and
    mtime are unknown until read, ``-1`` and ``0``)."""

    name: str
    path: str
    size: int
    mtime_ns: int
    root: str | None = None
    uri: str | None = None


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A directory entry that is not scored, with its reason code."""

    name: str
    code: str
    detail: str

    @property
    def ignored(self) -> bool:
        return self.code in IGNORED_CODES


@dataclasses.dataclass
class WalkResult:
    candidates: list[Candidate]
    skipped: list[Skipped]
    directories: list[str] = dataclasses.field(default_factory=list)  # every folder entered, relative, sorted


def display_name(name: str) -> str:
    """A printable, UTF-8-safe version of a name that may hold undecodable bytes (``\\xNN`` for each)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_images(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = (),
                extensions: Iterable[str] = IMAGE_EXTENSIONS | REFUSED_IMAGE_EXTENSIONS) -> WalkResult:
    """Every candidate image under ``root`` (sorted by name) and every entry that is not one.

    Args:
        root: the folder to list (its own path may be a symlink; it is resolved once).
        exclude: directories (e.g. the output folder) skipped silently when met inside the root.
        extensions: lower-case extensions (with the dot) that make a regular file a candidate.
    """
    root_real = os.path.realpath(root)
    excluded = {os.path.realpath(path) for path in exclude}
    extensions = frozenset(extensions)
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    directories: list[str] = []
    visited: set[tuple[int, int]] = set()
    root_info = os.stat(root_real)
    visited.add((root_info.st_dev, root_info.st_ino))
    pending = [(root_real, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as iterator:
                entries = list(iterator)
        except OSError as exc:
            skipped.append(Skipped(display_name(prefix.rstrip("/")) or ".", "unreadable_directory",
                                   exc.strerror or str(exc)))
            continue
        for entry in entries:
            name = prefix + entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append(Skipped(display_name(name), "undecodable_filename",
                                       "the name is not valid UTF-8; rename the file to score it"))
                continue
            try:
                if entry.is_symlink():
                    _symlink(entry, name, root_real, extensions, candidates, skipped)
                elif entry.is_dir(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    key = (info.st_dev, info.st_ino)
                    if key in visited or os.path.realpath(entry.path) in excluded:
                        continue
                    visited.add(key)
                    directories.append(name)
                    pending.append((entry.path, name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    _regular(name, entry.path, info, extensions, candidates, skipped, root_real)
                else:
                    info = entry.stat(follow_symlinks=False)
                    skipped.append(Skipped(name, "not_regular_file",
                                           f"special file ({stat.filemode(info.st_mode)}), never opened"))
            except OSError as exc:  # vanished or unreadable between listing and stat
                skipped.append(Skipped(name, "read_failed", exc.strerror or str(exc)))
    candidates.sort(key=lambda item: item.name)
    skipped.sort(key=lambda item: (item.name, item.code))
    return WalkResult(candidates, skipped, sorted(directories))


def _regular(name, path, info, extensions, candidates, skipped, root) -> None:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("._"):
        skipped.append(Skipped(name, "appledouble_companion", "macOS resource-fork companion, not an image"))
    elif os.path.splitext(base)[1].lower() not in extensions:
        skipped.append(Skipped(name, "ignored_extension", "not an image file extension"))
    else:
        candidates.append(Candidate(name, path, info.st_size, info.st_mtime_ns, root))


def _symlink(entry, name, root_real, extensions, candidates, skipped) -> None:
    try:
        target = os.path.realpath(entry.path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            skipped.append(Skipped(name, "symlink_loop", "the link chain loops"))
        else:
            skipped.append(Skipped(name, "broken_symlink", "the link target does not exist"))
        return
    info = os.stat(target)
    inside = is_within(target, root_real)
    if stat.S_ISDIR(info.st_mode):
        if inside:
            skipped.append(Skipped(name, "directory_symlink", "links to directories are not followed"))
        else:
            skipped.append(Skipped(name, "symlink_outside_root", "the link points outside the input folder"))
    elif not stat.S_ISREG(info.st_mode):
        skipped.append(Skipped(name, "not_regular_file",
                               f"the link points to a special file ({stat.filemode(info.st_mode)}), never opened"))
    elif not inside:
        skipped.append(Skipped(name, "symlink_outside_root", "the link points outside the input folder"))
    else:
        _regular(name, target, info, extensions, candidates, skipped, root_real)
