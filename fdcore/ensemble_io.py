"""The ensemble on disk: format, writing, assembling, reading and loading (fdcore ensembles, single experts,
FeatDistill releases). Every path an ensemble names must resolve inside its folder.

    ENSEMBLE_DIR/ensemble.json
    {
      "format": "fdcore-ensemble", "format_version": 1,
      "experts": [{"name": "expert_1", "path": "expert_1", "weight": 1.0}, ...],   # paths relative to ENSEMBLE_DIR
      "aggregator": "mean",      # default fusion rule (a registered aggregator name)
      "calibration": null,       # or a file name relative to ENSEMBLE_DIR
      "threshold": null,         # or {"value": t, "target_fpr": f, "validation": {...}}
      "card": {}                 # provenance
    }
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

from fdcore.ensemble import (FORMAT_NAME, Ensemble, EnsembleError, Member, ready_for_precision, resolve_device,
                             resolve_precision, torch_dtype)
from fdcore.fileio import write_json_atomic

FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FEATDISTILL_FILE = re.compile(r"^Expert_(\d+)_([A-Za-z0-9]+)\.pth$")


def _validate_members(members: Sequence[dict], where: str) -> list[dict]:
    if not isinstance(members, (list, tuple)) or not members:
        raise EnsembleError(f"{where}: 'experts' must be a non-empty list of {{name, path, weight}}")
    checked, seen = [], set()
    for index, member in enumerate(members):
        if not isinstance(member, dict):
            raise EnsembleError(f"{where}: experts[{index}] must be an object with name, path and weight")
        name, path, weight = member.get("name"), member.get("path"), member.get("weight", 1.0)
        if not isinstance(name, str) or not _MEMBER_NAME.match(name):
            raise EnsembleError(f"{where}: experts[{index}].name {name!r} must be letters, digits, '-', '_' or '.'")
        if name in seen:
            raise EnsembleError(f"{where}: expert name {name!r} appears twice")
        seen.add(name)
        if not isinstance(path, str) or not path or os.path.isabs(path) or ".." in Path(path).parts \
                or "\\" in path:
            raise EnsembleError(f"{where}: experts[{index}].path must be a path inside the ensemble directory "
                                f"(relative, without '..'), got {path!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise EnsembleError(f"{where}: experts[{index}].weight must be a finite number >= 0, got {weight!r}")
        checked.append({"name": name, "path": Path(path).as_posix(), "weight": float(weight)})
    return checked


def write_ensemble(directory, members: Sequence[dict], aggregator: str = "mean", card: dict | None = None,
                   calibration: str | None = None, threshold: dict | None = None) -> Path:
    """Write ``directory/ensemble.json`` atomically (the experts themselves are saved with ``fdcore.save_expert``).

    Args:
        directory: the ensemble directory (created if needed).
        members: ``[{"name": ..., "path": <relative to directory>, "weight": 1.0}, ...]`` in ensemble order.
        aggregator: default fusion rule name.
        card: JSON-ready provenance (source release, training runs...).
    Returns:
        The path of ensemble.json.
    """
    directory = Path(directory)
    checked = _validate_members(members, str(directory / ENSEMBLE_FILE))
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "experts": checked,
                "aggregator": aggregator, "calibration": calibration, "threshold": threshold, "card": card or {}}
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ENSEMBLE_FILE
    write_json_atomic(target, document)
    return target


def create_ensemble(out, experts: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]],
                    weights: Sequence[float] | None = None, aggregator: str = "mean", card: dict | None = None) -> Path:
    """Assemble trained expert directories (any plugins, mixed preprocessing) into a new ensemble directory ``out``.

    Args:
        out: the ensemble directory to create; it must not exist (it appears complete or not at all).
        experts: expert directories (``fdcore.save_expert`` / ``OUTPUT_DIR/expert`` of a training run), each
            optionally as ``(member name, directory)``; a plain directory is named after its registered expert
            (``npr``, ``clip``...), so two experts of one kind need explicit names.
        weights: one non-negative weight per expert (default all 1), used by weighted rules.
        aggregator: the ensemble's default fusion rule (a registered aggregator).
        card: extra JSON-ready provenance, stored under ``card``.

    Every file an expert's manifest lists is copied into ``out`` and its size and SHA-256 are checked on the copy
    itself; each copy is then loaded (its plugin must be installed), so ``out`` holds no reference outside itself
    and ``fdcore predict``, ``evaluate``, ``calibrate`` and :func:`load_ensemble` accept it.
    """
    from fdcore import registry
    from fdcore.expert_io import (CONFIG_FILE, MANIFEST_FILE, copy_verified_expert, load_expert_with_identity,
                                  read_expert_config)
    from fdcore.fileio import replace_dir_atomic

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EnsembleError(f"{out} already exists; choose a new ensemble directory (an ensemble is never "
                            "overwritten)")
    if not experts:
        raise EnsembleError("an ensemble needs at least one expert: give --expert DIR (repeatable)")
    try:
        registry.get_aggregator(aggregator)
    except registry.UnknownNameError as exc:
        raise EnsembleError(f"--aggregator: {exc}") from None
    if weights is not None and len(weights) != len(experts):
        raise EnsembleError(f"{len(weights)} weights for {len(experts)} experts; give one --weight per --expert, "
                            "in the same order")
    named = []
    for item in experts:
        name, directory = (item if isinstance(item, tuple) else (None, item))
        directory = Path(directory)
        if not directory.is_dir():
            raise EnsembleError(f"expert {directory} is not a directory; pass the folder holding expert.json "
                                "(a training run's OUTPUT_DIR/expert)")
        if not (directory / CONFIG_FILE).is_file() or not (directory / MANIFEST_FILE).is_file():
            hint = (" (that is an ensemble: pass its member directories)" if (directory / ENSEMBLE_FILE).is_file()
                    else "")
            raise EnsembleError(f"{directory} is not an fdcore expert directory: it needs {CONFIG_FILE} and "
                                f"{MANIFEST_FILE}{hint}")
        kind = read_expert_config(directory).get("expert")
        named.append((name or str(kind), directory))
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EnsembleError(f"member names must be unique, and {', '.join(map(repr, duplicates))} appears more than "
                            "once; name the members: --expert NAME=DIR (e.g. clip_1=runs/a/expert "
                            "clip_2=runs/b/expert)")
    members = _validate_members([{"name": name, "path": name, "weight": 1.0 if weights is None else weights[i]}
                                 for i, name in enumerate(names)], "ensemble create")
    sources = {}
    with replace_dir_atomic(out, overwrite=False) as staging:
        for (name, directory), member in zip(named, members):
            copied = copy_verified_expert(directory, staging / name)
            # the copy loads: its plugin is installed, its config is sound and its weights fit its architecture
            _, identity = load_expert_with_identity(copied)
            sources[name] = {"source": str(directory.resolve()), "identity": identity}
        write_ensemble(staging, members, aggregator=aggregator,
                       card={**(card or {}), "members": sources})
    return out


def read_ensemble_json(directory) -> dict:
    path = Path(directory) / ENSEMBLE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME \
            or document.get("format_version") != FORMAT_VERSION:
        raise EnsembleError(f"{path} is not an {FORMAT_NAME} v{FORMAT_VERSION} file (see docs/predict.md)")
    document["experts"] = _validate_members(document.get("experts"), str(path))
    if not isinstance(document.get("aggregator", "mean"), str):
        raise EnsembleError(f"{path}: 'aggregator' must be a registered aggregator name")
    calibration = document.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not _MEMBER_NAME.match(calibration)):
        raise EnsembleError(f"{path}: 'calibration' must be the name of a file inside the ensemble directory, got "
                            f"{calibration!r}")
    return document


def inside(directory: Path, relative: str, what: str) -> Path:
    """``directory / relative`` after checking that it resolves inside ``directory`` (symbolic links included). In
    a snapshot of the Hugging Face cache, whose files are links to their repo's blobs, a file may also resolve to a
    blob of that same repo (:func:`fdcore.hub.is_cached_blob`), and nowhere else."""
    from fdcore.hub import is_cached_blob

    root = Path(directory).resolve()
    target = (Path(directory) / relative).resolve()
    if target != root and root not in target.parents and not is_cached_blob(root, target):
        raise EnsembleError(f"{what} {relative!r} of {directory} resolves to {target}, outside the ensemble folder "
                            "(a symbolic link?); an ensemble must hold its experts and files itself")
    return Path(directory) / relative


def ensemble_files(directory) -> list[str]:
    """Every file an fdcore ensemble directory consists of, as relative POSIX paths: ensemble.json, its calibration
    file, and each member's manifest.json with the files that manifest lists. Nothing else in the directory is ever
    read, so this is what a copy, an upload or a download must hold."""
    from fdcore.expert_io import MANIFEST_FILE, read_manifest

    directory = Path(directory)
    document = read_ensemble_json(directory)
    files = [ENSEMBLE_FILE]
    if document.get("calibration"):
        inside(directory, document["calibration"], "calibration")
        files.append(document["calibration"])
    for spec in document["experts"]:
        manifest = read_manifest(inside(directory, spec["path"], "expert"))
        files += [f"{spec['path']}/{MANIFEST_FILE}", *(f"{spec['path']}/{name}" for name in sorted(manifest["files"]))]
    return list(dict.fromkeys(files))


def featdistill_files(directory) -> list[str]:
    """``Expert_<n>_<tag>.pth`` files of a FeatDistill release folder, in expert-number order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), entry.name) for entry in directory.iterdir()
             if (match := _FEATDISTILL_FILE.match(entry.name))]
    return [name for _, name in sorted(found)]


def load_ensemble(path, device: str | None = "auto", precision: str | None = None,
                  skip_hash_check: bool = False, expert_config: dict | None = None,
                  scoring_chunk: int | None = None) -> Ensemble:
    """Load an ensemble directory, a single fdcore expert directory, a FeatDistill release folder, or an ensemble on
    the Hugging Face Hub.

    Args:
        path: a directory with ``ensemble.json``, with ``expert.json`` (a one-expert ensemble), or with
            ``Expert_<n>_<tag>.pth`` files (FeatDistill release: mean of the experts' P(fake)); or
            ``hf://ORG/NAME[@REVISION]``, fetched into the Hugging Face cache and verified file by file
            (:func:`fdcore.hub.resolve_ensemble`; offline with ``HF_HUB_OFFLINE=1`` once cached).
        device: ``auto`` (GPU when visible), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (default fp32 on CPU, fp16 on GPU): weights are cast to it;
            ``int8`` (CPU only): linear layers dynamically quantised, see :mod:`fdcore.int8`.
        skip_hash_check: load a FeatDistill release that has no manifest.json (the identity still hashes the
            bytes that were loaded).
        expert_config: FeatDistill releases only: ``{file tag: constructor kwargs}`` for checkpoints whose
            architecture is not the plugin's default (e.g. a smaller backbone); see fdcore.featdistill.
        scoring_chunk: images per expert forward call (default :data:`SCORING_CHUNK`, 8; partial chunks are padded).
            Scores depend on it in their last bits and on nothing else about batching; 1 suits scoring one image at
            a time (no padding), and is then equally reproducible.
    """
    from fdcore.expert_io import CONFIG_FILE, load_expert_with_identity
    from fdcore.hub import resolve_ensemble

    directory = Path(resolve_ensemble(path))
    if not directory.is_dir():
        raise EnsembleError(f"ensemble {directory} does not exist or is not a directory; pass a folder holding "
                            f"{ENSEMBLE_FILE}, an fdcore expert (expert.json) or a FeatDistill release (Expert_*.pth)")
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    dtype = torch_dtype(precision)
    if (directory / ENSEMBLE_FILE).is_file():
        document = read_ensemble_json(directory)
        members = []
        for spec in document["experts"]:
            expert_dir = inside(directory, spec["path"], "expert")
            expert, identity = load_expert_with_identity(expert_dir, device=device, dtype=dtype)
            members.append(Member(spec["name"], ready_for_precision(expert, precision), spec["weight"], identity,
                                  str(expert_dir)))
        calibration = document.get("calibration")
        calibration_identity = None
        if calibration:
            calibration_path = inside(directory, calibration, "calibration")
            if not calibration_path.is_file():
                raise EnsembleError(f"{directory / ENSEMBLE_FILE} names calibration {calibration!r}, which is missing")
            calibration_bytes = calibration_path.read_bytes()  # read once: what is hashed is what is used
            calibration_identity = hashlib.sha256(calibration_bytes).hexdigest()
            from fdcore.calibration import Calibration

            calibrator = Calibration.from_bytes(calibration_bytes, str(calibration_path))
        else:
            calibrator = None
        return Ensemble(members, aggregator=document.get("aggregator") or "mean", kind=FORMAT_NAME,
                        source=str(directory.resolve()), device=device, precision=precision,
                        card=document.get("card"), calibration=calibration_identity, calibrator=calibrator,
                        # the threshold of the verified calibration file, never an unchecked copy
                        threshold=calibrator.threshold if calibrator is not None else None,
                        scoring_chunk=scoring_chunk)
    if (directory / CONFIG_FILE).is_file():
        expert, identity = load_expert_with_identity(directory, device=device, dtype=dtype)
        expert = ready_for_precision(expert, precision)
        member = Member(expert.name, expert, 1.0, identity, str(directory))
        return Ensemble([member], aggregator="mean", kind="fdcore-expert", source=str(directory.resolve()),
                        device=device, precision=precision, scoring_chunk=scoring_chunk)
    files = featdistill_files(directory)
    if files:
        try:
            from fdcore import featdistill
        except ImportError as exc:
            raise EnsembleError(f"{directory} looks like a FeatDistill release ({', '.join(files)}) but the "
                                f"FeatDistill importer (fdcore.featdistill) is not available: {exc}") from exc
        members = []
        for item in featdistill.iter_featdistill_release(directory, skip_hash_check=skip_hash_check, device=device,
                                                         dtype=dtype, expert_config=expert_config):
            # item.sha256 hashes the very bytes that were deserialised, verified or not.
            expert = ready_for_precision(item.expert.to(device=device, dtype=dtype).eval(), precision)
            members.append(Member(item.name, expert, 1.0,
                                  f"sha256:{item.sha256}", str(item.source.path)))
        return Ensemble(members, aggregator="mean", kind="featdistill-release", source=str(directory.resolve()),
                        device=device, precision=precision,
                        card={"featdistill_release": [m.source for m in members],
                              "hashes_checked": not skip_hash_check}, scoring_chunk=scoring_chunk)
    raise EnsembleError(f"{directory} is not an ensemble: expected {ENSEMBLE_FILE}, an fdcore expert "
                        "(expert.json + model.safetensors + manifest.json) or a FeatDistill release "
                        "(Expert_<n>_<tag>.pth files)")
