"""fdcore's own expert format: safetensors weights, a JSON config, and a SHA-256 manifest.

    EXPERT_DIR/
      expert.json        which registered expert class, its config (architecture), preprocessing, provenance, card
      model.safetensors  the state dict (no pickle anywhere)
      manifest.json      {"schema_version": 1, "files": {name: {"size_bytes": N, "sha256": hex}}}

Loading reads each file's bytes once, checks size and SHA-256 against the manifest, and parses those same bytes, so
what was verified is what is used. Nothing here unpickles anything.

Weights are not copied twice and the architecture is not randomly initialised only to be overwritten: on Linux the
bytes are read (and hashed) into a sealed in-memory file (:func:`snapshot_file`: nobody, this process included, can
change it afterwards), tensors are memory-mapped views of that snapshot, and the expert is built with its parameters
on the meta device and then takes those tensors as its parameters (:func:`build_with_state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

from fdcore.errors import FdcoreError
from fdcore.fileio import replace_dir_atomic

FORMAT_NAME = "fdcore-expert"
FORMAT_VERSION = 1
CONFIG_FILE = "expert.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
# Files a manifest may list: plain names inside the expert directory (no separators, no "..", no hidden files).
_PLAIN_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
# A safetensors header is a few hundred kB even for ViT-g; refuse absurd claims before allocating anything.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class ExpertFormatError(FdcoreError):
    """An expert directory is missing, corrupt, tampered with, or names an expert that is not installed."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class FileSnapshot:
    """A private, immutable in-memory copy of a file, with the size and SHA-256 of exactly the bytes it holds.

    On Linux the copy is a sealed memfd (no writes, no resizing, seals locked), so parsing :attr:`path` reads the
    bytes that were hashed even if the original file changes meanwhile, and parsers can memory-map it instead of
    copying it again. Elsewhere the copy is a bytes object (:attr:`data`) and :attr:`path` is None. Close it (or use
    it as a context manager) once parsed; tensors mapped from it keep their pages alive on their own.
    """

    def __init__(self, origin: Path, size: int, sha256: str, fd: int | None = None, data: bytes | None = None):
        self.origin, self.size, self.sha256 = origin, size, sha256
        self._fd, self._data = fd, data

    @property
    def path(self) -> str | None:
        return None if self._fd is None else f"/proc/self/fd/{self._fd}"

    @property
    def data(self) -> bytes:
        """The whole content as bytes (reads the memfd when there is one)."""
        if self._data is not None:
            return self._data
        return self.read(0, self.size)

    def read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return self._data[offset:offset + length]
        chunks = []
        while length > 0:
            chunk = os.pread(self._fd, min(length, 1 << 24), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = None

    def __enter__(self) -> "FileSnapshot":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _sealable_memfd() -> int | None:
    import fcntl

    if not (hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS") and os.path.isdir("/proc/self/fd")):
        return None
    try:
        return os.memfd_create("fdcore-weights", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    except OSError:
        return None


def snapshot_file(path: Path, chunk_size: int = 1 << 24) -> FileSnapshot:
    """Copy ``path`` into a :class:`FileSnapshot`, hashing the very bytes copied (one read of the file)."""
    import fcntl

    path = Path(path)
    digest = hashlib.sha256()
    fd = _sealable_memfd()
    if fd is None:
        data = path.read_bytes()
        digest.update(data)
        return FileSnapshot(path, len(data), digest.hexdigest(), data=data)
    size = 0
    try:
        with open(path, "rb") as handle:
            buffer = bytearray(chunk_size)
            view = memoryview(buffer)
            while count := handle.readinto(buffer):
                digest.update(view[:count])
                written = 0
                while written < count:
                    written += os.write(fd, view[written:count])
                size += count
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return FileSnapshot(path, size, digest.hexdigest(), fd=fd)


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside this block put their parameters on the meta device: no memory, and initialisers (the
    random init of a ViT-L is seconds on a small CPU) do nothing. Buffers are created normally, so non-persistent
    ones, which no state dict holds (index tensors such as ``position_ids``), keep the values the constructor gives
    them. Not thread-safe: it patches ``nn.Module.register_parameter`` for the duration of the block."""
    from torch import nn

    original = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            registered = module._parameters[name]
            module._parameters[name] = type(registered)(registered.to("meta"),
                                                        requires_grad=registered.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _meta_tensors(module) -> list[str]:
    return [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]


def build_with_state(factory: Callable[[], Any], load: Callable[[Any, bool], Any]):
    """``factory()`` holding the weights that ``load(module, assign)`` gives it, without initialising it first.

    The module is built under :func:`parameters_on_meta` and ``load(module, True)`` must load its state dict with
    ``assign=True`` (the loaded tensors become the parameters: no copy). Returns ``(module, load's result)``.
    Parameters take the dtype the constructor gave them (as ``load_state_dict`` without ``assign`` would cast).
    Falls back to the eager way (build with random init, copy the weights in) when the constructor cannot run on
    meta parameters or ties parameters together, or when anything is still on the meta device after a complete
    load, so a meta-built module never runs with tensors that hold no values. When ``load`` reports missing keys the
    module is returned as it is (those tensors still on meta): the caller must refuse it, as :func:`load_expert`
    does.
    """
    try:
        with parameters_on_meta():
            module = factory()
    except Exception:  # a constructor that computes with its parameters' values; the eager path reports real errors
        module = None
    if module is not None and len(list(module.parameters())) == len(list(module.named_parameters(
            remove_duplicate=False))):
        dtypes = {name: tensor.dtype for name, tensor in [*module.named_parameters(), *module.named_buffers()]}
        result = load(module, True)
        _restore_dtypes(module, dtypes)
        if getattr(result, "missing_keys", None) or not _meta_tensors(module):
            return module, result
    module = factory()
    return module, load(module, False)


def _restore_dtypes(module, dtypes: dict) -> None:
    from torch import nn

    for prefix, submodule in module.named_modules():
        for table in (submodule._parameters, submodule._buffers):
            for name, tensor in table.items():
                wanted = dtypes.get(f"{prefix}.{name}" if prefix else name)
                if tensor is None or wanted is None or tensor.dtype == wanted or tensor.is_meta:
                    continue
                converted = tensor.detach().to(wanted)
                table[name] = nn.Parameter(converted, requires_grad=tensor.requires_grad) \
                    if isinstance(tensor, nn.Parameter) else converted


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ExpertFormatError(f"{path} is missing: {directory} is not an fdcore expert directory "
                                "(create one with fdcore.save_expert or `fdcore expert import-featdistill`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("schema_version") != 1 or not isinstance(files, dict):
            raise ValueError("unsupported schema")
        for name, entry in files.items():
            if not isinstance(name, str) or not _PLAIN_FILE_NAME.match(name) or name == MANIFEST_FILE:
                raise ValueError(f"file name {name!r} is not a plain file name inside the directory")
            if not isinstance(entry.get("size_bytes"), int) or len(str(entry.get("sha256", ""))) != 64:
                raise ValueError(f"bad entry for {name}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExpertFormatError(f"{path} is not a valid manifest ({exc}); expected "
                                '{"schema_version": 1, "files": {name: {"size_bytes": N, "sha256": hex}}}') from exc
    return manifest


def _check_present_with_size(path: Path, expected: dict | None) -> Path:
    """Refuse a missing file, or one whose size differs from its manifest entry (cheap, before any reading)."""
    path = Path(path)
    if not path.is_file():
        raise ExpertFormatError(f"{path} is missing")
    if expected is not None:
        size = path.stat().st_size
        if size != expected["size_bytes"]:
            raise ExpertFormatError(f"{path} has {size} bytes but its manifest says {expected['size_bytes']}: the "
                                    "file is truncated or was replaced; re-download or re-export it")
    return path


def read_verified(path: Path, expected: dict | None) -> bytes:
    """The file's bytes, after checking them against a manifest entry (size first, then SHA-256)."""
    path = _check_present_with_size(path, expected)
    data = path.read_bytes()
    if expected is not None:
        digest = sha256_bytes(data)
        if digest != expected["sha256"]:
            raise ExpertFormatError(f"{path} SHA-256 {digest} does not match its manifest ({expected['sha256']}): "
                                    "the file is corrupt or was modified; re-download or re-export it")
    return data


def snapshot_verified(path: Path, expected: dict | None) -> FileSnapshot:
    """:func:`read_verified`, but the checked bytes are kept as a :class:`FileSnapshot` (no second copy to parse)."""
    path = _check_present_with_size(path, expected)
    if expected is None:
        return snapshot_file(path)
    return snapshot_checked(path, expected["size_bytes"], [(expected["sha256"], "manifest")], ExpertFormatError,
                            remedy="re-download or re-export it")


def snapshot_checked(path: Path, size_bytes: int | None, digests: list[tuple[str, str]], error: type[Exception],
                     remedy: str) -> FileSnapshot:
    """A sealed snapshot of ``path`` whose size and every ``(expected digest, where it comes from)`` were checked on
    the snapshotted bytes themselves (the size also before reading, which is cheap); a mismatch raises ``error``
    ending with ``remedy``."""
    if size_bytes is not None and path.stat().st_size != size_bytes:
        raise error(f"{path} has {path.stat().st_size} bytes but its manifest says {size_bytes}: truncated or "
                    f"replaced; {remedy}")
    snapshot = snapshot_file(path)
    try:
        if size_bytes is not None and snapshot.size != size_bytes:
            raise error(f"{path} changed while being read; try again")
        for expected, origin in digests:
            if snapshot.sha256 != expected:
                raise error(f"{path} SHA-256 {snapshot.sha256} does not match the {origin} hash {expected}: the "
                            f"file is corrupt or was modified; {remedy}")
    except BaseException:
        snapshot.close()
        raise
    return snapshot


def parse_safetensors(data: bytes | FileSnapshot, origin: Path) -> dict:
    """Tensors from safetensors bytes or a :class:`FileSnapshot` (memory-mapped from it, not copied), with a clean
    error for truncated or hostile headers."""
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import load_file

    snapshot = data if isinstance(data, FileSnapshot) else None
    size = snapshot.size if snapshot is not None else len(data)
    head = snapshot.read(0, 8) if snapshot is not None else data[:8]
    if size < 8:
        raise ExpertFormatError(f"{origin} is too short to be a safetensors file")
    (header_length,) = struct.unpack("<Q", head)
    if header_length > MAX_SAFETENSORS_HEADER or header_length > size - 8:
        raise ExpertFormatError(f"{origin} claims a {header_length}-byte header in a {size}-byte file: "
                                "truncated or not a safetensors file")
    try:
        if snapshot is None:
            return load_safetensors(data)
        if snapshot.path is None:
            return load_safetensors(snapshot.data)
        return load_file(snapshot.path)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ExpertFormatError(f"{origin} is not a valid safetensors file: {exc}") from exc


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _provenance(expert) -> dict:
    import torch

    from fdcore import __version__, registry

    provider = None
    try:
        provider = registry.entry("experts", expert.name).provider
    except FdcoreError:
        pass
    versions = {"fdcore": __version__, "torch": torch.__version__}
    if provider:
        try:
            import importlib.metadata

            versions[provider] = importlib.metadata.version(provider)
        except Exception:
            pass
    return {"provider": provider, "versions": versions}


def save_expert(expert, directory, card: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``expert`` in fdcore's format; the directory appears complete or not at all.

    Args:
        expert: a registered :class:`fdcore.Expert` instance.
        directory: destination directory (must not exist unless ``overwrite``).
        card: JSON-ready model card (data, hyper-parameters, metrics) stored in expert.json.
    """
    from safetensors.torch import save as save_safetensors

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ExpertFormatError(f"{directory} already exists; choose a new directory or pass overwrite=True")
    if not expert.name:
        raise ExpertFormatError(f"{type(expert).__name__} has no registered name; only registered experts can be saved")
    state = {}
    seen_storage = set()
    for key, tensor in expert.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if pointer in seen_storage:  # tied weights: safetensors refuses shared storage, a copy loads the same
            tensor = tensor.clone()
        seen_storage.add(pointer)
        state[key] = tensor
    weights = save_safetensors(state, metadata={"format": FORMAT_NAME})
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "expert": expert.name,
        "class": f"{type(expert).__module__}:{type(expert).__qualname__}",
        "config": expert.get_config(),
        "preprocessing": expert.preprocessing.to_dict(),
        **_provenance(expert),
        "card": card or {},
    }
    config_bytes = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with replace_dir_atomic(directory) as staging:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / CONFIG_FILE).write_bytes(config_bytes)
        _write_json(staging / MANIFEST_FILE, {"schema_version": 1, "files": {
            WEIGHTS_FILE: {"size_bytes": len(weights), "sha256": sha256_bytes(weights)},
            CONFIG_FILE: {"size_bytes": len(config_bytes), "sha256": sha256_bytes(config_bytes)},
        }})
    return directory


def read_expert_config(directory) -> dict:
    """expert.json of an expert directory, verified against its manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    return _parse_expert_config(directory, read_verified(directory / CONFIG_FILE, manifest["files"].get(CONFIG_FILE)))


def _parse_expert_config(directory: Path, data: bytes) -> dict:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise ExpertFormatError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT_NAME or config.get("format_version") != FORMAT_VERSION:
        raise ExpertFormatError(f"{directory / CONFIG_FILE} is not an {FORMAT_NAME} v{FORMAT_VERSION} config")
    return config


def expert_identity(directory) -> str:
    """A content hash of the expert (its manifest's file hashes), for binding outputs to the model that made them."""
    return manifest_identity(read_manifest(Path(directory)))


def manifest_identity(manifest: dict) -> str:
    listing = sorted((name, entry["sha256"]) for name, entry in manifest["files"].items())
    return sha256_bytes(json.dumps(listing).encode())


def _check_against_architecture(module, state: dict, directory: Path, name: str) -> None:
    """Every tensor the architecture (built on meta tensors: no memory) expects, with its shape, and no other: a
    config that does not describe these weights is refused before any tensor is attached to it."""
    expected = {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}
    held = {key: tuple(tensor.shape) for key, tensor in state.items()}
    missing = sorted(set(expected) - set(held))
    unexpected = sorted(set(held) - set(expected))
    misshapen = [f"{key}: {held[key]} vs {expected[key]}" for key in sorted(set(held) & set(expected))
                 if held[key] != expected[key]]
    if missing or unexpected or misshapen:
        raise ExpertFormatError(
            f"{directory / WEIGHTS_FILE} does not match the {name!r} architecture in {CONFIG_FILE}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shapes (file vs config) {misshapen[:5]}")


def load_expert(directory, device: str = "cpu", dtype=None):
    """Load an expert saved by :func:`save_expert`, verifying every byte against the manifest first.

    The expert's plugin must be installed (the class is looked up by its registered name, never imported from a
    path in the file). Returns the expert in eval mode on ``device``.
    """
    return load_expert_with_identity(directory, device, dtype)[0]


def load_expert_with_identity(directory, device: str = "cpu", dtype=None):
    """:func:`load_expert`, plus the identity of exactly what was loaded: computed from the manifest whose hashes
    the loaded bytes were checked against (read once), never by reading the folder again, so a folder changed in
    place while loading cannot bind another model's identity to these weights."""
    from fdcore import registry

    directory = Path(directory)
    manifest = read_manifest(directory)
    if WEIGHTS_FILE not in manifest["files"] or CONFIG_FILE not in manifest["files"]:
        raise ExpertFormatError(f"{directory / MANIFEST_FILE} must list {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = _parse_expert_config(directory, read_verified(directory / CONFIG_FILE, manifest["files"][CONFIG_FILE]))
    name = config.get("expert")
    try:
        expert_class = registry.get("experts", name)
    except registry.UnknownNameError as exc:
        provider = config.get("provider") or "the plugin that provides it"
        raise ExpertFormatError(f"{directory} holds a {name!r} expert, which is not registered: install {provider} "
                                f"({exc})") from exc
    architecture = config.get("config", {})
    try:
        expert_class.check_config(architecture)
    except (ValueError, TypeError) as exc:
        raise ExpertFormatError(f"{directory / CONFIG_FILE}: refused before loading anything: {exc}") from None
    with snapshot_verified(directory / WEIGHTS_FILE, manifest["files"][WEIGHTS_FILE]) as snapshot:
        state = parse_safetensors(snapshot, directory / WEIGHTS_FILE)

    def load(module, assign: bool):
        _check_against_architecture(module, state, directory, name)
        return module.load_state_dict(state, strict=False, assign=assign)

    try:
        expert, result = build_with_state(lambda: expert_class.from_config(architecture), load)
    except RuntimeError as exc:  # load_state_dict's size mismatches
        raise ExpertFormatError(f"{directory / WEIGHTS_FILE} does not match the {name!r} architecture in "
                                f"{CONFIG_FILE}: {' '.join(str(exc).split())[:2000]}") from exc
    except (ValueError, TypeError) as exc:
        raise ExpertFormatError(f"{directory / CONFIG_FILE}: the {name!r} expert cannot be built from its config: "
                                f"{exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ExpertFormatError(
            f"{directory / WEIGHTS_FILE} does not match the {name!r} architecture in {CONFIG_FILE}: "
            f"missing {list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
    expert.eval()
    if dtype is not None:
        expert.to(dtype=dtype)
    return expert.to(device), manifest_identity(manifest)


def copy_checked(origin: Path, destination: Path, entry: dict) -> bool:
    """Copy ``origin`` to the new file ``destination`` (flushed to disk), hashing the very bytes written; True when
    their size and SHA-256 are those of the manifest ``entry`` (``{"size_bytes", "sha256"}``). The copy stops as
    soon as it outgrows the entry; the caller removes a copy that does not match."""
    digest, size = hashlib.sha256(), 0
    with open(origin, "rb") as reader, open(destination, "xb") as writer:
        while chunk := reader.read(1 << 24):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
            if size > entry["size_bytes"]:
                break
        writer.flush()
        os.fsync(writer.fileno())
    return size == entry["size_bytes"] and digest.hexdigest() == entry["sha256"]


def copy_verified_expert(source, target) -> Path:
    """Copy an expert directory's manifest and every file it lists to ``target`` (which must not exist), checking
    each copy's size and SHA-256 against the manifest on the bytes written; files the manifest does not list are not
    copied. A mismatch raises :class:`ExpertFormatError` naming the file, and ``target`` is removed."""
    source, target = Path(source), Path(target)
    manifest = read_manifest(source)
    target.mkdir(parents=False, exist_ok=False)
    try:
        for name, entry in sorted(manifest["files"].items()):
            origin = source / name
            if origin.is_symlink() or not origin.is_file():
                raise ExpertFormatError(f"{origin} is listed in {source / MANIFEST_FILE} but is missing or not a "
                                        "regular file")
            if not copy_checked(origin, target / name, entry):
                raise ExpertFormatError(f"{origin} does not match {source / MANIFEST_FILE} (size or SHA-256 "
                                        "differs): the expert is corrupt or was modified; re-export it")
        _write_json(target / MANIFEST_FILE, manifest)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target
