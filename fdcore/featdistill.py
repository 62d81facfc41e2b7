"""Import of FeatDistill's released expert files, safely.

A release directory holds ``Expert_<n>_<tag>.pth`` files (PyTorch checkpoints: a plain state dict, or one under
``model_state_dict``, with ``vision_encoder.*`` and ``classifier.*`` keys) and usually a ``manifest.json``::

    {"schema_version": 1, "files": {"Expert_1_<tag>.pth": {"size_bytes": N, "sha256": "<64 hex>"}, ...}}

Each file is read into memory once (a sealed in-memory snapshot, :func:`fdcore.expert_io.snapshot_file`); its size
and SHA-256 are checked against the manifest (and against any hashes the caller pins) before anything is
deserialised, and the very bytes that were hashed are then parsed with ``torch.load(..., weights_only=True)``, which
builds tensors and containers only and refuses any other pickled object without running it. The tensors are
memory-mapped views of the snapshot (``mmap=True``), and the expert is built without random initialisation and takes
them as its parameters, so the weights exist once in memory. Without a manifest, loading requires an explicit
``skip_hash_check=True``.

The expert class for a file is the registered expert whose class attribute ``featdistill_tag`` equals the file's
``<tag>``; the core knows no tag itself. ``fdcore expert import-featdistill`` converts a release into an fdcore
ensemble directory (safetensors + manifest) so the ``.pth`` files never need to be unpickled again.

Pinning: a manifest that sits next to the files only detects accidental corruption, since whoever replaces a file
can replace the manifest too. The real release's hashes are not known to fdcore; a user who has them from a trusted
channel passes ``expected_sha256={"Expert_1_<tag>.pth": "<hex>", ...}`` (CLI: ``--sha256 FILE=HEX``), and those
files must match them whatever the manifest says.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from fdcore.errors import FdcoreError
from fdcore.expert_io import MANIFEST_FILE, ExpertFormatError, FileSnapshot, read_manifest, snapshot_checked

RELEASE_FILE = re.compile(r"^Expert_(?P<index>[0-9]+)_(?P<tag>[A-Za-z0-9][A-Za-z0-9_-]*)\.pth$")
SOURCE_FORMAT = "featdistill-release"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class FeatDistillReleaseError(FdcoreError):
    """A FeatDistill release directory or file is missing, unverifiable, tampered with, or not a plain checkpoint."""


@dataclasses.dataclass(frozen=True)
class ReleaseFile:
    """One ``Expert_<n>_<tag>.pth`` file of a release."""

    index: int
    tag: str
    path: Path

    @property
    def expert_name(self) -> str:
        return f"expert_{self.index}"


@dataclasses.dataclass(frozen=True)
class ImportedExpert:
    """An expert built from one release file, with the verification record of the bytes it came from."""

    name: str
    expert: Any
    source: ReleaseFile
    sha256: str
    size_bytes: int
    verified_by: tuple[str, ...]  # "manifest", "pinned", or empty when the check was skipped


def release_files(directory) -> list[ReleaseFile]:
    """The release's expert files in index order; a clear error if there are none or two share an index."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FeatDistillReleaseError(f"{directory} is not a directory; pass the folder holding the "
                                      "Expert_<n>_<tag>.pth files of a FeatDistill release")
    found: dict[int, ReleaseFile] = {}
    for path in sorted(directory.iterdir()):
        match = RELEASE_FILE.match(path.name)
        if not match:
            continue
        if not path.is_file():
            raise FeatDistillReleaseError(f"{path} is not a regular file")
        item = ReleaseFile(int(match["index"]), match["tag"].lower(), path)  # tags compare case-insensitively
        if item.index in found:
            raise FeatDistillReleaseError(f"{directory} has two files for expert {item.index}: "
                                          f"{found[item.index].path.name} and {path.name}")
        found[item.index] = item
    if not found:
        raise FeatDistillReleaseError(f"{directory} holds no Expert_<n>_<tag>.pth files: not a FeatDistill release")
    return [found[index] for index in sorted(found)]


def is_featdistill_release(directory) -> bool:
    """True when ``directory`` holds at least one ``Expert_<n>_<tag>.pth`` file."""
    directory = Path(directory)
    return directory.is_dir() and any(RELEASE_FILE.match(path.name) for path in directory.iterdir())


def expert_class_for_tag(tag: str) -> type:
    """The registered expert class that imports ``Expert_<n>_<tag>.pth`` files."""
    from fdcore import registry

    matches = [(name, registry.get("experts", name)) for name in registry.names("experts")]
    matches = [(name, cls) for name, cls in matches if getattr(cls, "featdistill_tag", None) == tag]
    if not matches:
        raise FeatDistillReleaseError(
            f"no installed expert imports FeatDistill '{tag}' files (Expert_<n>_{tag}.pth); install the fdcore plugin "
            "that provides it (`fdcore list experts --json` shows each expert's featdistill_tag)")
    if len(matches) > 1:
        raise FeatDistillReleaseError(f"experts {[name for name, _ in matches]} all claim FeatDistill tag {tag!r}; "
                                      "uninstall all but one")
    return matches[0][1]


def _expected_hashes(directory: Path, files: list[ReleaseFile], skip_hash_check: bool,
                     expected_sha256: Mapping[str, str] | None) -> dict[str, dict]:
    """Per file name: {"size_bytes": int|None, "sha256": [(hex, origin), ...]} to check before deserialising."""
    pinned = {}
    for name, digest in (expected_sha256 or {}).items():
        digest = str(digest).strip().lower()
        if not _SHA256_HEX.match(digest):
            raise FeatDistillReleaseError(f"pinned SHA-256 for {name} is not 64 hex digits: {digest!r}")
        if name not in {item.path.name for item in files}:
            raise FeatDistillReleaseError(f"a SHA-256 is pinned for {name}, which is not in {directory}")
        pinned[name] = digest
    checks = {item.path.name: {"size_bytes": None, "sha256": []} for item in files}
    for name, digest in pinned.items():
        checks[name]["sha256"].append((digest, "pinned"))
    if skip_hash_check:
        return checks
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        unpinned = [name for name in checks if name not in pinned]
        if unpinned:
            raise FeatDistillReleaseError(
                f"{manifest_path} is missing, so {', '.join(unpinned)} cannot be verified before loading. Get the "
                "release's manifest.json, pin the hashes (--sha256 FILE=HEX), or, if you trust these files, pass "
                "--skip-hash-check (Python: skip_hash_check=True)")
        return checks
    try:
        manifest = read_manifest(directory)
    except ExpertFormatError as exc:
        raise FeatDistillReleaseError(str(exc)) from exc
    listed = manifest["files"]
    for name, check in checks.items():
        entry = listed.get(name)
        if entry is None:
            raise FeatDistillReleaseError(f"{manifest_path} does not list {name}: it is not part of the release it "
                                          "describes; remove it, or pass --skip-hash-check if you trust it")
        check["size_bytes"] = entry["size_bytes"]
        check["sha256"].append((str(entry["sha256"]).lower(), "manifest"))
    absent = sorted(name for name in listed if RELEASE_FILE.match(name) and name not in checks)
    if absent:
        raise FeatDistillReleaseError(f"{manifest_path} lists {', '.join(absent)}, missing from {directory}: the "
                                      "release is incomplete; download the missing files")
    return checks


_ZIP_MAGIC = b"PK\x03\x04"


def parse_checkpoint(data: bytes | FileSnapshot, origin: Path) -> dict:
    """A state dict of tensors from checkpoint bytes or a :class:`~fdcore.expert_io.FileSnapshot` (memory-mapped from
    it when it is a zip-format checkpoint: no copy); anything that is not plain tensors is refused unexecuted."""
    import torch

    if isinstance(data, FileSnapshot):
        # torch.load can map only zip-format checkpoints (torch >= 1.6); legacy ones are parsed from bytes.
        source = data.path if data.path is not None and data.read(0, 4) == _ZIP_MAGIC else io.BytesIO(data.data)
    else:
        source = io.BytesIO(data)
    try:
        # weights_only=True is explicit so that TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off.
        loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=isinstance(source, str))
    except Exception as exc:  # UnpicklingError for foreign objects, RuntimeError/EOFError for corrupt archives
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FeatDistillReleaseError(
            f"{origin} was refused: it is not a plain tensor checkpoint ({reason}). fdcore loads checkpoints with "
            "torch.load(weights_only=True) only and never runs code stored in a file") from exc
    state = loaded.get("model_state_dict", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not state:
        raise FeatDistillReleaseError(f"{origin} holds a {type(state).__name__}, not a state dict (a dict of tensors, "
                                      "plain or under 'model_state_dict')")
    bad = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise FeatDistillReleaseError(f"{origin}: state dict entries {bad[:5]} are not named tensors")
    return state


def iter_featdistill_release(directory, skip_hash_check: bool = False, device: str = "cpu", dtype=None,
                             expected_sha256: Mapping[str, str] | None = None,
                             expert_config: Mapping[str, dict] | None = None) -> Iterator[ImportedExpert]:
    """Verify, load and build the release's experts one at a time (only one checkpoint is in memory at once).

    Every file is checked (names, manifest coverage, pinned hashes) before the first one is parsed, and each file's
    bytes are verified before they are deserialised.

    Args:
        directory: the release folder.
        skip_hash_check: load without a manifest (the files are then trusted as they are).
        expected_sha256: ``{file name: hex}`` pinned hashes, checked in addition to the manifest.
        expert_config: ``{tag: constructor kwargs}`` for checkpoints whose architecture is not the plugin's default
            (for example ``{"<tag>": {"backbone_config": {...}}}`` for a smaller backbone trained with FeatDistill's
            code).
    """
    directory = Path(directory)
    files = release_files(directory)
    classes = {item.tag: expert_class_for_tag(item.tag) for item in files}
    checks = _expected_hashes(directory, files, skip_hash_check, expected_sha256)
    for item in files:
        check = checks[item.path.name]
        with snapshot_checked(item.path, check["size_bytes"], check["sha256"], FeatDistillReleaseError,
                              remedy="download it again from the release") as snapshot:
            digest, size = snapshot.sha256, snapshot.size
            state = parse_checkpoint(snapshot, item.path)
        try:
            options = dict((expert_config or {}).get(item.tag, {}))
            expert = classes[item.tag].from_featdistill_state_dict(state, **options)
        except FdcoreError as exc:
            raise FeatDistillReleaseError(f"{item.path}: {exc}") from exc
        del state
        expert.eval()
        if dtype is not None:
            expert.to(dtype=dtype)
        yield ImportedExpert(item.expert_name, expert.to(device), item, digest, size,
                             tuple(origin for _, origin in check["sha256"]))


def load_featdistill_release(directory, skip_hash_check: bool = False, device: str = "cpu", dtype=None,
                             expected_sha256: Mapping[str, str] | None = None,
                             expert_config: Mapping[str, dict] | None = None) -> list[tuple[str, Any]]:
    """``[("expert_1", expert), ...]`` in file order, every file verified before it is deserialised.

    FeatDistill's reference score is the mean of these experts' P(AI-generated) (aggregator ``mean``). See
    :func:`iter_featdistill_release` for the arguments.
    """
    return [(item.name, item.expert) for item in iter_featdistill_release(
        directory, skip_hash_check=skip_hash_check, device=device, dtype=dtype, expected_sha256=expected_sha256,
        expert_config=expert_config)]
