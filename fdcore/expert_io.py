"""fdcore's own expert format: safetensors weights, a JSON config, and a SHA-256 manifest.

    EXPERT_DIR/
      expert.json        which registered expert class, its config (architecture), preprocessing, provenance, card
      model.safetensors  the state dict (no pickle anywhere)
      manifest.json      {"schema_version": 1, "files": {name: {"size_bytes": N, "sha256": hex}}}

Loading reads each file's bytes once, checks size and SHA-256 against the manifest, and parses those same bytes, so
what was verified is what is used. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from fdcore.errors import FdcoreError

FORMAT_NAME = "fdcore-expert"
FORMAT_VERSION = 1
CONFIG_FILE = "expert.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
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
            if not isinstance(entry.get("size_bytes"), int) or len(str(entry.get("sha256", ""))) != 64:
                raise ValueError(f"bad entry for {name}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExpertFormatError(f"{path} is not a valid manifest ({exc}); expected "
                                '{"schema_version": 1, "files": {name: {"size_bytes": N, "sha256": hex}}}') from exc
    return manifest


def read_verified(path: Path, expected: dict | None) -> bytes:
    """The file's bytes, after checking them against a manifest entry (size first, then SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise ExpertFormatError(f"{path} is missing")
    if expected is not None:
        size = path.stat().st_size
        if size != expected["size_bytes"]:
            raise ExpertFormatError(f"{path} has {size} bytes but its manifest says {expected['size_bytes']}: the "
                                    "file is truncated or was replaced; re-download or re-export it")
    data = path.read_bytes()
    if expected is not None:
        digest = sha256_bytes(data)
        if digest != expected["sha256"]:
            raise ExpertFormatError(f"{path} SHA-256 {digest} does not match its manifest ({expected['sha256']}): "
                                    "the file is corrupt or was modified; re-download or re-export it")
    return data


def parse_safetensors(data: bytes, origin: Path) -> dict:
    """Tensors from safetensors bytes, with a clean error for truncated or hostile headers."""
    from safetensors.torch import load as load_safetensors

    if len(data) < 8:
        raise ExpertFormatError(f"{origin} is too short to be a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > MAX_SAFETENSORS_HEADER or header_length > len(data) - 8:
        raise ExpertFormatError(f"{origin} claims a {header_length}-byte header in a {len(data)}-byte file: "
                                "truncated or not a safetensors file")
    try:
        return load_safetensors(data)
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
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; an expert directory is an ordinary shared folder
    try:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / CONFIG_FILE).write_bytes(config_bytes)
        _write_json(staging / MANIFEST_FILE, {"schema_version": 1, "files": {
            WEIGHTS_FILE: {"size_bytes": len(weights), "sha256": sha256_bytes(weights)},
            CONFIG_FILE: {"size_bytes": len(config_bytes), "sha256": sha256_bytes(config_bytes)},
        }})
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_expert_config(directory) -> dict:
    """expert.json of an expert directory, verified against its manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    data = read_verified(directory / CONFIG_FILE, manifest["files"].get(CONFIG_FILE))
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise ExpertFormatError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if config.get("format") != FORMAT_NAME or config.get("format_version") != FORMAT_VERSION:
        raise ExpertFormatError(f"{directory / CONFIG_FILE} is not an {FORMAT_NAME} v{FORMAT_VERSION} config")
    return config


def expert_identity(directory) -> str:
    """A content hash of the expert (its manifest's file hashes), for binding outputs to the model that made them."""
    manifest = read_manifest(Path(directory))
    listing = sorted((name, entry["sha256"]) for name, entry in manifest["files"].items())
    return sha256_bytes(json.dumps(listing).encode())


def load_expert(directory, device: str = "cpu", dtype=None):
    """Load an expert saved by :func:`save_expert`, verifying every byte against the manifest first.

    The expert's plugin must be installed (the class is looked up by its registered name, never imported from a
    path in the file). Returns the expert in eval mode on ``device``.
    """
    from fdcore import registry

    directory = Path(directory)
    manifest = read_manifest(directory)
    if WEIGHTS_FILE not in manifest["files"] or CONFIG_FILE not in manifest["files"]:
        raise ExpertFormatError(f"{directory / MANIFEST_FILE} must list {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = read_expert_config(directory)
    name = config.get("expert")
    try:
        expert_class = registry.get("experts", name)
    except registry.UnknownNameError as exc:
        provider = config.get("provider") or "the plugin that provides it"
        raise ExpertFormatError(f"{directory} holds a {name!r} expert, which is not registered: install {provider} "
                                f"({exc})") from exc
    state = parse_safetensors(read_verified(directory / WEIGHTS_FILE, manifest["files"][WEIGHTS_FILE]),
                              directory / WEIGHTS_FILE)
    expert = expert_class.from_config(config.get("config", {}))
    result = expert.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExpertFormatError(
            f"{directory / WEIGHTS_FILE} does not match the {name!r} architecture in {CONFIG_FILE}: "
            f"missing {list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
    expert.eval()
    if dtype is not None:
        expert.to(dtype=dtype)
    return expert.to(device)
