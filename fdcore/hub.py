"""Ensembles on the Hugging Face Hub (docs/hub.md).

    hf://ORG/NAME[@REVISION]      an ensemble repository at a branch, tag or commit (default: main)

:func:`resolve_ensemble` is the one place such a value becomes a local folder: every consumer (``fdcore predict``,
``evaluate``, ``serve``, :func:`fdcore.load_ensemble`) goes through it. It fetches the repository with
``huggingface_hub.snapshot_download`` into the standard Hugging Face cache (``HF_HOME``; nothing is fetched with
``HF_HUB_OFFLINE=1``, the cache is used as it is) and verifies the snapshot before anything reads it:

* every entry is a folder, a file, or a link to a blob of this repository's own cache folder
  (``snapshots/<commit>/f -> ../../blobs/<hash>``, the cache layout); any other link is refused;
* ``hub-manifest.json`` lists every file with its size and SHA-256, and each file is hashed against it; a file it does
  not list is refused (only ``README.md``, the model card, and ``.gitattributes`` may be there, and fdcore never
  reads them), as is a listed file that is missing;
* the listed files are exactly those the ensemble consists of (:func:`fdcore.ensemble_io.ensemble_files`), and the
  ensemble identity computed from them is the one the manifest records.

Loading then goes through the ordinary loader, which checks each expert's files against its own manifest again and
never runs code from the repository (safetensors and JSON only, experts built by registered plugins).

:func:`push_ensemble` (``fdcore ensemble push``) stages a verified copy of an ensemble folder, adds the model card and
``hub-manifest.json`` (neither is part of the identity), and uploads exactly that folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fdcore.errors import FdcoreError

SCHEME = "hf://"
HUB_MANIFEST = "hub-manifest.json"
MANIFEST_FORMAT = "fdcore-hub-manifest"
MANIFEST_VERSION = 1
CARD_FILE = "README.md"
# Files a repository may hold besides the manifest's: fdcore never reads them.
NEVER_READ = frozenset({CARD_FILE, ".gitattributes"})
DEFAULT_LICENSE = "apache-2.0"
# A hub-manifest.json lists a few files per expert; anything near this size is not one.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^({_NAME})/({_NAME})$")
_REVISION = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_URI_HELP = ("expected hf://ORG/NAME or hf://ORG/NAME@REVISION (a branch, tag or commit of a Hugging Face model "
             "repository), e.g. hf://my-org/my-detector@main")


class HubError(FdcoreError):
    """A Hub reference that is malformed, cannot be fetched, or whose files do not verify; the message says why."""


@dataclasses.dataclass(frozen=True)
class HubRef:
    """A model repository on the Hub and an optional revision (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def short(self) -> str:
        """``ORG/NAME[@REVISION]``, as ``fdcore ensemble pull`` takes it."""
        return self.uri[len(SCHEME):]


def is_hub_uri(value: Any) -> bool:
    """Whether ``value`` means a Hub reference (``hf:...``); a malformed one is refused by :func:`parse_hub_uri`."""
    return isinstance(value, str) and value[:3].lower() == "hf:"


def _check_repo_id(repo_id: str, value: str) -> str:
    match = _REPO_ID.match(repo_id)
    if not match or any("--" in part or ".." in part for part in match.groups()):
        raise HubError(f"{value!r} is not a Hub ensemble reference: {_URI_HELP}. ORG and NAME are letters, digits, "
                       "'-', '_' and '.' (no '--' or '..', at most 96 each)")
    return repo_id


def _check_revision(revision: str, value: str) -> str:
    if not _REVISION.match(revision) or ".." in revision or "//" in revision or revision.endswith("/"):
        raise HubError(f"{value!r}: revision {revision!r} is not a branch, tag or commit name; {_URI_HELP}")
    return revision


def parse_hub_uri(value: str, bare: bool = False) -> HubRef:
    """``hf://ORG/NAME[@REVISION]`` (also ``ORG/NAME[@REVISION]`` with ``bare``) as a :class:`HubRef`; anything
    else is a :class:`HubError` naming the value."""
    if not isinstance(value, str):
        raise HubError(f"{value!r} is not a Hub ensemble reference: {_URI_HELP}")
    text = value
    if text.startswith(SCHEME):
        text = text[len(SCHEME):]
    elif is_hub_uri(text) or not bare:
        raise HubError(f"{value!r} is not a Hub ensemble reference: {_URI_HELP}")
    repo_id, separator, revision = text.partition("@")
    if separator and not revision:
        raise HubError(f"{value!r} has an empty revision after '@'; {_URI_HELP}")
    return HubRef(_check_repo_id(repo_id, value), _check_revision(revision, value) if separator else None)


def is_cached_blob(root: Path, target: Path) -> bool:
    """Whether ``target`` (resolved) is a blob of the Hugging Face cache repository whose snapshot folder is ``root``
    (resolved): ``<cache>/models--ORG--NAME/snapshots/<commit>`` -> ``<cache>/models--ORG--NAME/blobs/<hash>``."""
    root, target = Path(root), Path(target)
    repository = root.parent.parent
    return (root.parent.name == "snapshots" and repository.name.startswith("models--")
            and target.parent == repository / "blobs")


# -- fetching and verifying ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PulledEnsemble:
    """A verified snapshot: where it is, which commit, and the ensemble identity its manifest records."""

    ref: HubRef
    commit: str
    path: Path
    identity: str
    files: dict[str, dict]


def resolve_ensemble(value):
    """The one place an ensemble argument becomes a local folder: ``hf://ORG/NAME[@REVISION]`` is fetched (or found
    in the cache) and verified (:func:`pull_ensemble`), and its snapshot folder returned; any other value is returned
    unchanged."""
    if not is_hub_uri(value):
        return value
    return pull_ensemble(value).path


def pull_ensemble(value, to=None) -> PulledEnsemble:
    """Fetch ``hf://ORG/NAME[@REVISION]`` (or ``ORG/NAME[@REVISION]``) into the Hugging Face cache and verify every
    file (see the module docstring). With ``to``, also copy the ensemble's files into that new folder (regular files,
    each checked again on the bytes written; the card and the manifest are left out), a local ensemble that
    ``fdcore calibrate`` may write into."""
    ref = value if isinstance(value, HubRef) else parse_hub_uri(value, bare=True)
    snapshot = _download(ref)
    identity, files = verify_snapshot(snapshot, ref)
    pulled = PulledEnsemble(ref, snapshot.name, snapshot, identity, files)
    if to is not None:
        _copy_out(pulled, Path(to))
    return pulled


def _hub_errors():
    from huggingface_hub import errors

    return errors


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for network, HTTP and cache trouble (its HTTP library's errors included)."""
    errors = _hub_errors()
    return tuple(error for error in (OSError, ValueError, getattr(errors, "HTTPError", None))
                 if isinstance(error, type))


def hub_reference_of(path) -> str | None:
    """``hf://ORG/NAME@COMMIT`` for a snapshot folder of the Hugging Face cache
    (``.../models--ORG--NAME/snapshots/COMMIT``), else None: lets another machine fetch exactly the files this one
    verified (the Ray engine hands it to its actors instead of a path only this machine has)."""
    parts = Path(path).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    org, _, name = parts[-3][len("models--"):].partition("--")
    if not org or not name or not _REPO_ID.match(f"{org}/{name}") or not _REVISION.match(parts[-1]):
        return None
    return f"{SCHEME}{org}/{name}@{parts[-1]}"


def _download(ref: HubRef) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as exc:
        raise HubError(f"{ref.uri} needs the huggingface_hub package ({exc}); install it with "
                       "`pip install huggingface_hub`") from None
    from fdcore import __version__

    errors = _hub_errors()
    offline = bool(constants.HF_HUB_OFFLINE)
    cache = constants.HF_HUB_CACHE
    fetch = (f"on a machine with network access, run `fdcore ensemble pull {ref.short}` (it fills the same cache: "
             f"copy that cache, or pull with --to DIR and pass --ensemble DIR)")
    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, library_name="fdcore",
                                 library_version=__version__, local_files_only=offline)
    except errors.RevisionNotFoundError:
        raise HubError(f"{ref.uri}: revision {ref.revision!r} does not exist in {ref.repo_id}; give a branch, tag "
                       "or commit of that repository (hf://ORG/NAME@REVISION)") from None
    except errors.RepositoryNotFoundError as exc:  # GatedRepoError included
        raise HubError(f"{ref.uri}: the repository {ref.repo_id} was not found or you have no access to it "
                       f"({_first_line(exc)}); check the name, and for a private or gated repository log in with "
                       "`hf auth login` or set HF_TOKEN") from None
    except getattr(errors, "IncompleteSnapshotError", ()) as exc:
        raise HubError(f"{ref.uri}: the cached copy in {cache} is incomplete ({_first_line(exc)}); {fetch}") from None
    except errors.LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached")
        revision = f" at revision {ref.revision!r}" if ref.revision else ""
        raise HubError(f"{ref.uri} is not in the Hugging Face cache ({cache}){revision} and {why}: {fetch}") from None
    except _transfer_errors() as exc:
        raise HubError(f"{ref.uri}: cannot fetch it from the Hub: {_first_line(exc)}") from None
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _snapshot_entries(snapshot: Path, where: str) -> dict[str, Path]:
    """Every file of a cached snapshot as ``{relative POSIX path: the file holding its bytes}``. Links are followed
    only to a blob of this repository's cache folder; other links and anything but folders and files are refused."""
    if snapshot.is_symlink() or not snapshot.is_dir():
        raise HubError(f"{where}: {snapshot} is not a folder of the Hugging Face cache")
    root = snapshot.resolve()
    found: dict[str, Path] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            relative = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                target = Path(os.path.realpath(entry.path))
                if not is_cached_blob(root, target) or not target.is_file():
                    raise HubError(f"{where}: {relative} is a link to {target}, which is not a file of this "
                                   "repository's cache folder (blobs/); refusing to read it. Delete the cached "
                                   f"repository ({root.parent.parent}) and pull it again")
                found[relative] = target
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                found[relative] = Path(entry.path)
            else:
                raise HubError(f"{where}: {relative} is neither a file nor a folder; refusing the snapshot")
    return found


def _read_hub_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
                or manifest.get("format_version") != MANIFEST_VERSION:
            raise ValueError(f'expected "format": "{MANIFEST_FORMAT}", "format_version": {MANIFEST_VERSION}')
        if not isinstance(manifest.get("identity"), str) or not _HEX64.match(manifest["identity"]):
            raise ValueError("'identity' must be a SHA-256 hex digest")
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ValueError("'files' must map relative paths to {size_bytes, sha256}")
        for name, entry in files.items():
            parts = name.split("/") if isinstance(name, str) else [""]
            if not all(_PATH_PART.match(part) for part in parts) or name in NEVER_READ or name == HUB_MANIFEST:
                raise ValueError(f"{name!r} is not a relative path of plain names inside the repository")
            if not isinstance(entry, dict) or isinstance(entry.get("size_bytes"), bool) \
                    or not isinstance(entry.get("size_bytes"), int) or entry["size_bytes"] < 0 \
                    or not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
                raise ValueError(f"bad entry for {name!r}: expected {{\"size_bytes\": N, \"sha256\": hex}}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HubError(f"{where}: {HUB_MANIFEST} is not a valid fdcore Hub manifest ({exc}); the repository was not "
                       "written by `fdcore ensemble push`, or was changed by hand") from None
    return manifest


def verify_snapshot(snapshot: Path, ref: HubRef | None = None) -> tuple[str, dict[str, dict]]:
    """Verify a cached snapshot folder against its ``hub-manifest.json`` (see the module docstring). Returns the
    recorded ensemble identity and the manifest's files; raises :class:`HubError` naming the first file at fault."""
    from fdcore.ensemble import FORMAT_NAME, EnsembleError, ensemble_identity
    from fdcore.ensemble_io import ensemble_files, read_ensemble_json
    from fdcore.expert_io import ExpertFormatError, manifest_identity, read_manifest, sha256_file

    snapshot = Path(snapshot)
    where = f"{ref.uri} (commit {snapshot.name})" if ref is not None else str(snapshot)
    again = (f"delete the cached repository ({snapshot.resolve().parent.parent}) and pull it again; if the "
             "repository itself is wrong, push the ensemble again with `fdcore ensemble push`")
    entries = _snapshot_entries(snapshot, where)
    if HUB_MANIFEST not in entries:
        raise HubError(f"{where} holds no {HUB_MANIFEST}, so it is not an fdcore ensemble repository (push one with "
                       "`fdcore ensemble push DIR ORG/NAME`); nothing in it was read")
    if entries[HUB_MANIFEST].stat().st_size > MAX_MANIFEST_BYTES:
        raise HubError(f"{where}: {HUB_MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes; not an fdcore manifest")
    manifest = _read_hub_manifest(entries[HUB_MANIFEST].read_bytes(), where)
    listed = manifest["files"]
    present = {name for name in entries if name not in NEVER_READ and name != HUB_MANIFEST}
    extra = sorted(present - set(listed))
    if extra:
        raise HubError(f"{where}: {', '.join(extra[:5])} {'is' if len(extra) == 1 else 'are'} not listed in "
                       f"{HUB_MANIFEST}; refusing files that were never verified. {again}")
    missing = sorted(set(listed) - present)
    if missing:
        raise HubError(f"{where}: {', '.join(missing[:5])} (listed in {HUB_MANIFEST}) "
                       f"{'is' if len(missing) == 1 else 'are'} missing from the snapshot; {again}")
    for name, entry in sorted(listed.items()):
        path = entries[name]
        size = path.stat().st_size
        if size != entry["size_bytes"]:
            raise HubError(f"{where}: {name} has {size} bytes but {HUB_MANIFEST} says {entry['size_bytes']}: the "
                           f"file is truncated or was modified; {again}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise HubError(f"{where}: {name} SHA-256 {digest} does not match {HUB_MANIFEST} ({entry['sha256']}): "
                           f"the file is corrupt or was modified; {again}")
    try:
        needed = ensemble_files(snapshot)
        document = read_ensemble_json(snapshot)
        members = [(spec["name"], spec["weight"], manifest_identity(read_manifest(snapshot / spec["path"])))
                   for spec in document["experts"]]
    except (EnsembleError, ExpertFormatError) as exc:
        raise HubError(f"{where}: the files verify but do not form an fdcore ensemble: {exc}") from None
    unlisted = sorted(set(needed) - set(listed))
    if unlisted:
        raise HubError(f"{where}: the ensemble consists of {', '.join(unlisted[:5])} too, which {HUB_MANIFEST} does "
                       f"not list (so it is missing, or was never verified); {again}")
    unused = sorted(set(listed) - set(needed))
    if unused:
        raise HubError(f"{where}: {HUB_MANIFEST} lists {', '.join(unused[:5])}, which the ensemble does not consist "
                       f"of; an ensemble repository holds exactly its ensemble. {again}")
    calibration = document.get("calibration")
    identity = ensemble_identity(FORMAT_NAME, members, listed[calibration]["sha256"] if calibration else None)
    if identity != manifest["identity"]:
        raise HubError(f"{where}: the files give ensemble identity {identity}, but {HUB_MANIFEST} records "
                       f"{manifest['identity']}; {again}")
    return identity, listed


def _copy_out(pulled: PulledEnsemble, to: Path) -> None:
    from fdcore.expert_io import copy_checked
    from fdcore.fileio import replace_dir_atomic

    if to.exists() or to.is_symlink():
        raise HubError(f"--to {to} already exists; give a new folder (a copy never overwrites anything)")
    with replace_dir_atomic(to, overwrite=False) as staging:
        for name, entry in sorted(pulled.files.items()):
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            if not copy_checked(pulled.path / name, destination, entry):
                raise HubError(f"{pulled.ref.uri}: {name} changed while it was being copied to {to}; try again")


# -- pushing ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PushedEnsemble:
    """What :func:`push_ensemble` uploaded (or, with ``dry_run``, would upload)."""

    repo_id: str
    revision: str | None
    identity: str
    files: list[str]
    card: str
    commit: str | None = None
    url: str | None = None


def parse_repo_id(value: str) -> str:
    """``ORG/NAME`` (or ``hf://ORG/NAME``) of a repository to push to; a revision belongs in ``--revision``."""
    ref = parse_hub_uri(value, bare=True)
    if ref.revision is not None:
        raise HubError(f"{value!r}: give the repository as ORG/NAME and the branch with --revision {ref.revision}")
    return ref.repo_id


def read_evaluation(path, identity: str) -> dict:
    """``metrics.json`` of an ``fdcore evaluate`` output folder (or the file itself), refused unless it measured the
    ensemble with this ``identity``."""
    path = Path(path)
    metrics_path = path / "metrics.json" if path.is_dir() else path
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(f"--evaluation {path}: cannot read {metrics_path} ({exc}); pass the --out folder of "
                       "`fdcore evaluate`") from None
    if not isinstance(metrics, dict) or metrics.get("format") != "fdcore.metrics":
        raise HubError(f"--evaluation {metrics_path} is not the metrics.json of `fdcore evaluate`")
    measured = ((metrics.get("evaluation") or {}).get("ensemble") or {}).get("identity")
    if measured != identity:
        raise HubError(f"--evaluation {metrics_path} measured ensemble {str(measured)[:16]}…, not this one "
                       f"({identity[:16]}…): it was evaluated before a change (a new calibration, other experts); "
                       "run `fdcore evaluate --ensemble DIR ...` again and pass its --out folder")
    return metrics


def stage_ensemble(directory, staging: Path) -> None:
    """Copy the files an ensemble consists of from ``directory`` into the empty folder ``staging``, each expert file
    checked against its manifest on the bytes written (:func:`fdcore.expert_io.copy_verified_expert`)."""
    from fdcore.ensemble import EnsembleError
    from fdcore.ensemble_io import ENSEMBLE_FILE, inside, read_ensemble_json
    from fdcore.expert_io import CONFIG_FILE, copy_verified_expert

    directory = Path(directory)
    if not (directory / ENSEMBLE_FILE).is_file():
        hint = (f"it is a single expert: make it an ensemble first with `fdcore ensemble create OUT --expert "
                f"{directory}`" if (directory / CONFIG_FILE).is_file() else
                "pass a folder made by `fdcore ensemble create` (or `fdcore expert import-featdistill`)")
        raise EnsembleError(f"{directory} has no {ENSEMBLE_FILE}; only fdcore ensembles are pushed: {hint}")
    document = read_ensemble_json(directory)
    for spec in document["experts"]:
        target = staging / spec["path"]
        if target.exists():
            continue  # two members sharing one folder
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_verified_expert(inside(directory, spec["path"], "expert"), target)
    names = [ENSEMBLE_FILE] + ([document["calibration"]] if document.get("calibration") else [])
    for name in names:
        source = inside(directory, name, "calibration" if name != ENSEMBLE_FILE else "ensemble file")
        if source.is_symlink() or not source.is_file():
            raise EnsembleError(f"{source} is missing or not a regular file")
        shutil.copyfile(source, staging / name)


def write_hub_manifest(staging: Path, identity: str) -> dict:
    """Hash every file of the staged ensemble into ``hub-manifest.json`` (the card is not listed: it is never read,
    and may be edited on the Hub)."""
    from fdcore import __version__
    from fdcore.ensemble_io import ensemble_files
    from fdcore.expert_io import sha256_file

    files = {name: {"size_bytes": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
             for name in sorted(ensemble_files(staging))}
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "identity": identity,
                "files": files, "made_by": {"fdcore": __version__, "command": "fdcore ensemble push"}}
    (staging / HUB_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def push_ensemble(directory, repo: str, *, private: bool = False, revision: str | None = None,
                  license: str | None = None, evaluation=None, commit_message: str | None = None,
                  dry_run: bool = False, api=None) -> PushedEnsemble:
    """Upload an ensemble folder to the Hub repository ``repo`` (``ORG/NAME``, created when missing).

    Args:
        directory: an fdcore ensemble folder; every file is verified (copied, hashed, loaded once) before anything is
            uploaded, and a folder that does not verify is refused.
        private: create the repository private (an existing repository keeps its visibility).
        revision: a branch to push to (created from the default branch when missing); default: the default branch.
        license: the card's licence identifier (default: the ensemble card's ``license``, else apache-2.0).
        evaluation: an ``fdcore evaluate`` output folder whose metrics go into the card; it must have measured this
            very ensemble (same identity).
        dry_run: stage and verify, write the card, upload nothing (``api`` is not used).
        api: a ``huggingface_hub.HfApi`` (default: a new one, with the token of ``hf auth login`` or HF_TOKEN).

    The repository (at that revision) then holds exactly the staged folder: the ensemble's files, ``README.md`` (the
    model card) and ``hub-manifest.json``; other files are deleted in the same commit.
    """
    from fdcore.ensemble_io import ensemble_files, load_ensemble

    repo_id = parse_repo_id(repo)
    if revision is not None:
        _check_revision(revision, f"--revision {revision}")
    if license is not None and not _LICENSE.match(license):
        raise HubError(f"--license {license!r} is not a licence identifier of the Hub (lowercase, e.g. apache-2.0, "
                       "mit, cc-by-nc-4.0, other)")
    if not dry_run and api is None:
        _check_can_push(repo_id)
    staging = Path(tempfile.mkdtemp(prefix="fdcore-push-"))
    try:
        stage_ensemble(directory, staging)
        ensemble = load_ensemble(staging, device="cpu", precision="fp32")  # the staged bytes load: plugins, shapes
        metrics = read_evaluation(evaluation, ensemble.identity) if evaluation is not None else None
        from fdcore.hub_card import model_card

        card = model_card(ensemble, staging, repo_id, license=license, evaluation=metrics)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        write_hub_manifest(staging, ensemble.identity)
        files = sorted([*ensemble_files(staging), CARD_FILE, HUB_MANIFEST])
        pushed = PushedEnsemble(repo_id, revision, ensemble.identity, files, card)
        if dry_run:
            return pushed
        message = commit_message or f"fdcore ensemble push: ensemble {ensemble.identity[:16]}"
        info = _upload(api, repo_id, staging, private, revision, message)
        pushed.commit = getattr(info, "oid", None)
        pushed.url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
        return pushed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_can_push(repo_id: str) -> None:
    """Fail before staging anything when the upload cannot happen."""
    try:
        from huggingface_hub import constants
    except ImportError as exc:
        raise HubError(f"pushing needs the huggingface_hub package ({exc}): `pip install huggingface_hub`") from None
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set, and pushing needs network access (unset "
                       "it); --dry-run checks the ensemble and shows the card without uploading")


def _upload(api, repo_id: str, folder: Path, private: bool, revision: str | None, message: str):
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(library_name="fdcore")
    errors = _hub_errors()
    step = "create the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            step = f"create the branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "upload the files"
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=message, delete_patterns=["*"])
    except _transfer_errors() as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, getattr(errors, "OfflineModeIsEnabled", ())):
            why = "HF_HUB_OFFLINE is set; pushing needs network access"
        elif status in (401, 403):
            why = "not allowed: log in with `hf auth login` (or set HF_TOKEN) with a token that can write to it"
        else:
            why = _first_line(exc)
        raise HubError(f"cannot push to {repo_id}: could not {step}: {why}") from None
