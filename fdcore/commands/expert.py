"""``fdcore expert``: inspect expert and ensemble directories; convert FeatDistill release files to fdcore's format.

    fdcore expert import-featdistill RELEASE_DIR OUT_DIR [--skip-hash-check] [--sha256 FILE=HEX ...]
    fdcore expert info DIR [--json]
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import click

from fdcore.errors import FdcoreError


@click.group("expert")
def command():
    """Inspect expert and ensemble directories; import FeatDistill release files."""


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key or not item:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = item
    return pairs


def _backbone_configs(values: tuple[str, ...]) -> dict[str, dict]:
    configs = {}
    for tag, path in _pairs(values, "--backbone-config").items():
        try:
            configs[tag] = {"backbone_config": json.loads(Path(path).read_text(encoding="utf-8"))}
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read the JSON config {path}: {exc}", param_hint="--backbone-config")
        if not isinstance(configs[tag]["backbone_config"], dict):
            raise click.BadParameter(f"{path} must hold a JSON object (a vision config)",
                                     param_hint="--backbone-config")
    return configs


def _check_conversion(source_expert, directory: Path) -> None:
    """Reload the saved expert and require bit-identical logits on seeded inputs: the conversion lost nothing."""
    import torch

    from fdcore.expert_io import load_expert

    reloaded = load_expert(directory)
    size = source_expert.preprocessing.size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = source_expert(pixels), reloaded(pixels)
    if not torch.equal(expected, got):
        raise FdcoreError(f"{directory}: the converted expert's outputs differ from the checkpoint's (max difference "
                          f"{(expected - got).abs().max().item():.3g}); nothing was written")


@command.command("import-featdistill")
@click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--skip-hash-check", is_flag=True,
              help="Import without manifest.json (the .pth files are trusted as they are).")
@click.option("--sha256", "pinned", multiple=True, metavar="FILE=HEX",
              help="Pin a file's SHA-256 (from a trusted channel); checked in addition to manifest.json. Repeatable.")
@click.option("--backbone-config", "backbone_configs", multiple=True, metavar="TAG=CONFIG_JSON",
              help="Vision config (JSON) for checkpoints whose backbone is not the plugin's default size. Repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the import succeeded).")
def import_featdistill_command(release_dir, out_dir, skip_hash_check, pinned, backbone_configs, overwrite):
    """Convert a FeatDistill release (Expert_<n>_<tag>.pth + manifest.json) into an fdcore ensemble directory.

    Each file is verified against manifest.json before it is deserialised (torch.load with weights_only=True),
    imported with strict key matching, saved in fdcore's format (safetensors + SHA-256 manifest), reloaded and
    checked for bit-identical outputs. OUT_DIR/ensemble.json averages the experts' P(AI-generated) ("mean"), as the
    reference does. OUT_DIR appears complete or not at all.
    """
    from fdcore import __version__
    from fdcore.ensemble_io import write_ensemble
    from fdcore.expert_io import save_expert
    from fdcore.featdistill import SOURCE_FORMAT, iter_featdistill_release
    from fdcore.fileio import replace_dir_atomic

    if out_dir.exists() and not overwrite:
        raise FdcoreError(f"{out_dir} already exists; choose a new directory or pass --overwrite")
    expected_sha256 = _pairs(pinned, "--sha256")
    expert_config = _backbone_configs(backbone_configs)
    release = str(release_dir.resolve())
    with replace_dir_atomic(out_dir) as staging:
        members, sources = [], {}
        for item in iter_featdistill_release(release_dir, skip_hash_check=skip_hash_check,
                                             expected_sha256=expected_sha256, expert_config=expert_config):
            source = {"file": item.source.path.name, "tag": item.source.tag, "sha256": item.sha256,
                      "size_bytes": item.size_bytes, "verified_by": list(item.verified_by)}
            card = {"source": {"format": SOURCE_FORMAT, "release": release, **source},
                    "converted_by": {"fdcore": __version__, "command": "fdcore expert import-featdistill"}}
            save_expert(item.expert, staging / item.name, card=card)
            _check_conversion(item.expert, staging / item.name)
            parameters = sum(p.numel() for p in item.expert.parameters())
            verified = " and ".join(item.verified_by) or "NOT verified (--skip-hash-check)"
            click.echo(f"{item.name}: {item.source.path.name} ({item.expert.name}, {parameters / 1e6:.1f}M parameters, "
                       f"sha256 {item.sha256[:16]}…, {verified}) -> {out_dir / item.name}")
            members.append({"name": item.name, "path": item.name, "weight": 1.0})
            sources[item.source.path.name] = source
            del item
        write_ensemble(staging, members, aggregator="mean", card={
            "source": {"format": SOURCE_FORMAT, "release": release, "files": sources,
                       "hash_check": "skipped" if skip_hash_check and not expected_sha256 else "verified"},
            "reference_score": "mean of the experts' P(AI-generated), as FeatDistill's inference",
            "converted_by": {"fdcore": __version__, "command": "fdcore expert import-featdistill"},
        })
    click.echo(f"wrote ensemble {out_dir} ({len(members)} expert(s), aggregator mean); score it with "
               f"`fdcore predict IMAGES --ensemble {out_dir}`")


# ------------------------------------------------------------------------------------------------------ info

def _verify_files(directory: Path) -> dict:
    """Check every file listed in the manifest (size, then streamed SHA-256); raise on the first mismatch."""
    from fdcore.expert_io import MANIFEST_FILE, ExpertFormatError, read_manifest, sha256_file

    manifest = read_manifest(directory)
    checked = {}
    for name, entry in sorted(manifest["files"].items()):
        path = directory / name
        if path.is_symlink():
            raise ExpertFormatError(f"{path} is a symbolic link; an expert directory must hold its files itself "
                                    "(refusing to read what the link points to)")
        if not path.is_file():
            raise ExpertFormatError(f"{path} is listed in {directory / MANIFEST_FILE} but missing")
        size = path.stat().st_size
        if size != entry["size_bytes"]:
            raise ExpertFormatError(f"{path} has {size} bytes, its manifest says {entry['size_bytes']}: truncated or "
                                    "replaced; re-export or re-download it")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ExpertFormatError(f"{path} SHA-256 {digest} does not match its manifest ({entry['sha256']}): "
                                    "corrupt or modified; re-export or re-download it")
        checked[name] = {"size_bytes": size, "sha256": digest, "ok": True}
    unlisted = sorted(path.name for path in directory.iterdir()
                      if path.name not in manifest["files"] and path.name != MANIFEST_FILE)
    return {"files": checked, "unlisted": unlisted}


def _tensor_summary(weights: Path) -> dict:
    """Parameter count and dtypes from the safetensors header alone (no tensor is read)."""
    from fdcore.expert_io import MAX_SAFETENSORS_HEADER, ExpertFormatError

    with open(weights, "rb") as handle:
        prefix = handle.read(8)
        (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (None,)
        if length is None or length > MAX_SAFETENSORS_HEADER:
            raise ExpertFormatError(f"{weights} has no valid safetensors header")
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise ExpertFormatError(f"{weights} has a safetensors header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ExpertFormatError(f"{weights}: the safetensors header must be a JSON object of tensors")
    count, dtypes = 0, set()
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not isinstance(dtype, str) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ExpertFormatError(f"{weights}: tensor {key!r} in the safetensors header needs a dtype and a shape "
                                    f"of non-negative integers, got {entry!r:.200}")
        elements = 1
        for dimension in shape:
            elements *= dimension
        count += elements
        dtypes.add(dtype)
    return {"parameters": count, "tensors": len(header) - ("__metadata__" in header), "dtypes": sorted(dtypes)}


def expert_info(directory: Path) -> dict:
    """What an expert directory holds, after verifying every file against its manifest."""
    from fdcore.expert_io import WEIGHTS_FILE, read_expert_config

    verification = _verify_files(directory)
    config = read_expert_config(directory)
    architecture = config.get("config", {}).get("backbone_config") or {}
    return {
        "directory": str(directory),
        "expert": config.get("expert"),
        "class": config.get("class"),
        "provider": config.get("provider"),
        "versions": config.get("versions"),
        "preprocessing": config.get("preprocessing"),
        "architecture": {key: architecture[key] for key in ("model_type", "hidden_size", "num_hidden_layers",
                                                            "num_attention_heads", "patch_size", "image_size")
                         if key in architecture},
        "weights": _tensor_summary(directory / WEIGHTS_FILE),
        "card": config.get("card", {}),
        "verified": verification,
    }


@command.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(directory, as_json):
    """Summarise an expert (or ensemble) directory and verify every file against its SHA-256 manifest."""
    from fdcore.ensemble_io import ENSEMBLE_FILE, inside, read_ensemble_json

    if (directory / ENSEMBLE_FILE).is_file():
        document = read_ensemble_json(directory)
        members = [{"name": spec["name"], "weight": spec["weight"],
                    **expert_info(inside(directory, spec["path"], "expert"))} for spec in document["experts"]]
        info = {"ensemble": str(directory), "aggregator": document.get("aggregator"),
                "calibration": document.get("calibration"), "threshold": document.get("threshold"),
                "card": document.get("card", {}), "experts": members}
    else:
        info = expert_info(directory)
        members = None
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
        return
    if members is None:
        _echo_expert(info)
    else:
        click.echo(f"ensemble {directory}: {len(members)} experts, aggregator {info['aggregator']}")
        for member in members:
            click.echo("")
            _echo_expert(member, title=f"{member['name']} (weight {member['weight']:g})")
    click.echo("")
    click.echo("all files match their manifests")


def _echo_expert(info: dict, title: str | None = None) -> None:
    pre = info.get("preprocessing") or {}
    arch = info["architecture"]
    weights = info["weights"]
    click.echo(f"{title or info['directory']}: expert {info['expert']!r} from {info['provider']}")
    if arch:
        click.echo(f"  architecture  {arch.get('model_type', '?')}: {arch.get('num_hidden_layers', '?')} blocks, "
                   f"hidden {arch.get('hidden_size', '?')}, patch {arch.get('patch_size', '?')}")
    click.echo(f"  weights       {weights['parameters']:,} parameters in {weights['tensors']} tensors "
               f"({', '.join(weights['dtypes'])})")
    geometry = (f"native-resolution windows, {pre.get('crops', 1)} per image" if pre.get("resize") == "native"
                else f"{pre.get('resize')} {pre.get('interpolation')}")
    click.echo(f"  input         {pre.get('size')} px, {geometry}, mean {pre.get('mean')}, std {pre.get('std')}")
    click.echo(f"  versions      {', '.join(f'{k} {v}' for k, v in (info.get('versions') or {}).items())}")
    source = (info.get("card") or {}).get("source")
    if source:
        click.echo(f"  source        {source.get('format')} {source.get('file', '')} "
                   f"sha256 {source.get('sha256', '?')}")
    for name, entry in info["verified"]["files"].items():
        click.echo(f"  ok            {name} {entry['size_bytes']:,} bytes sha256 {entry['sha256'][:16]}…")
    for name in info["verified"]["unlisted"]:
        click.echo(f"  warning       {name} is not in the manifest (ignored by fdcore)")
