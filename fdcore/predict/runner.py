"""``fdcore predict``: score every image under a folder or named by a manifest, resumably and fault-tolerantly.

The flow of one run (see docs/predict.md for the user-facing contract):

1. lock ``OUT_DIR/.lock`` (rank 0), load the ensemble, build the binding and check it against the work directory;
2. list the inputs (:func:`fdcore.data.manifest.list_input`: a folder or a manifest) and keep those with no result
   for their current size+mtime (a URL's result is kept whatever the object's size: it is matched on its key);
3. decode + resize in DataLoader workers (each image decoded once, resized once per distinct expert geometry)
   while the main process runs the experts; each batch's outcomes are appended to the work log at once;
4. merge every work log into the sorted final files, fusing per-expert probabilities with the aggregator over the
   whole set (so set-level rules such as rank-mean see every image, and batching cannot change any score).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fdcore.ensemble import Ensemble, resolve_device, resolve_precision
from fdcore.ensemble_io import load_ensemble
from fdcore import scoring
from fdcore.data.manifest import list_input
from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, PIXEL_POLICY_VERSION
from fdcore.predict import outputs, state, worklog
from fdcore.predict.distributed import ProcessGroup, process_group, shard
from fdcore.provenance import package_versions, plugin_set
from fdcore.remote import DEFAULT_MAX_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, TRANSIENT_CODES, FetchPolicy, RemoteImage
from fdcore.walk import Candidate, WalkResult

EXIT_COMPLETE = 0
EXIT_USER_ERROR = 2
EXIT_PARTIAL = 3
# Stopped by a signal: the shell convention 128 + signal number (130 for Ctrl-C / SIGINT, 143 for SIGTERM).
EXIT_SIGNAL_BASE = 128
FORMAT_NAME = "fdcore-predictions"
FORMAT_VERSION = 1
# Failures that may not happen again (the file or the machine may have been fixed): retried on every run.
RETRIED_CODES = frozenset({"read_failed", "out_of_memory", "worker_failed"}) | TRANSIENT_CODES
# Testing aid: seconds to sleep after each batch is logged, so tests can kill a run in the middle.
THROTTLE_ENV = "FDCORE_PREDICT_TEST_THROTTLE"


@dataclasses.dataclass
class PredictOptions:
    """Everything ``fdcore predict`` accepts (the CLI maps its flags one to one onto these)."""

    images: str
    ensemble: str
    out: str
    aggregator: str | None = None  # default: the ensemble's own
    weights: Sequence[float] | None = None
    per_expert: bool = False
    batch_size: int = 16
    workers: int = 2
    precision: str | None = None  # default fp32 on CPU, fp16 on GPU
    device: str = "auto"
    overwrite: bool = False
    quiet: bool = False
    save_every: int = 8  # batches between fsyncs (each batch is handed to the OS at once regardless)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    skip_hash_check: bool = False
    excel_safe: bool = False  # prefix formula-like text cells with ' (fdcore.csvfile)
    # manifests and URLs (docs/predict.md "Manifests and URLs")
    path_column: str | None = None  # default: path, uri or url
    id_column: str | None = None  # default: id when the manifest has it, else the location as written
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    allow_private_urls: bool = False

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(max_bytes=int(self.max_bytes), timeout_s=float(self.timeout_s), retries=int(self.retries),
                           allow_private_addresses=bool(self.allow_private_urls))


@dataclasses.dataclass
class PredictSummary:
    status: str
    exit_code: int
    images: int
    scored: int
    skipped: int
    ignored: int
    processed_this_run: int
    reused: int
    reasons: dict[str, int]
    torn_tails_dropped: int
    corrupt_lines_dropped: int
    out_dir: str
    predictions: str
    errors: str
    elapsed_s: float
    images_per_s: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        reasons = ", ".join(f"{code} {count}" for code, count in sorted(self.reasons.items()))
        if self.images == 0:
            return (f"nothing to score: no image file in the input ({self.ignored} other files ignored, "
                    f"{self.skipped} skipped{': ' + reasons if reasons else ''}); check the IMAGES path. Extensions "
                    f"scored in a folder: {', '.join(sorted(IMAGE_EXTENSIONS))}")
        if self.scored == 0:
            return (f"nothing was scored: all {self.images} images were skipped [{reasons}]; see {self.errors} "
                    "for each file's reason")
        text = (f"{self.status}: {self.scored}/{self.images} images scored ({self.processed_this_run} this run, "
                f"{self.reused} reused), {self.skipped} skipped, {self.ignored} ignored"
                f"{' [' + reasons + ']' if reasons else ''}; {self.images_per_s:.1f} images/s -> {self.predictions}")
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so the same clean stop runs."""

    signum = signal.SIGTERM


class PredictInterrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM after saving what it had scored; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = EXIT_SIGNAL_BASE + self.signum


@contextlib.contextmanager
def stop_cleanly_on_sigterm():
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread only, where handlers can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_options(options: PredictOptions) -> None:
    from fdcore.data.manifest import input_kind

    input_kind(options.images)
    for name in ("batch_size", "save_every", "max_pixels", "max_bytes"):
        if int(getattr(options, name)) < 1:
            raise state.PredictError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.workers < 0:
        raise state.PredictError(f"--workers must be 0 or more, got {options.workers}")
    if not options.max_aspect_ratio >= 1:
        raise state.PredictError(f"the maximum aspect ratio must be at least 1, got {options.max_aspect_ratio}")
    if not options.timeout_s > 0 or options.retries < 0:
        raise state.PredictError(f"--timeout must be positive and --retries 0 or more, got {options.timeout_s} and "
                                 f"{options.retries}")
    if options.aggregator is not None:
        from fdcore import registry

        registry.get_aggregator(options.aggregator)  # a typo is reported now, not after loading the ensemble


def build_binding(options: PredictOptions, ensemble: Ensemble, fusion: scoring.Fusion,
                  device_type: str | None = None) -> dict:
    """Everything that determines the scores; resuming requires an exact match. ``device_type``: where the experts
    run when that is not where ``ensemble`` was loaded (an engine's actors)."""
    from fdcore.preprocess import PREPROCESS_VERSION

    described = ensemble.describe()
    described.pop("source", None)  # moving the ensemble folder does not change the weights
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ensemble": described,
        "aggregator": fusion.name,
        "aggregator_set_level": fusion.set_level,
        "weights": None if fusion.weights is None else list(fusion.weights),
        "preprocess_version": PREPROCESS_VERSION,
        "pixel_policy_version": PIXEL_POLICY_VERSION,
        "limits": {"max_pixels": int(options.max_pixels), "max_aspect_ratio": float(options.max_aspect_ratio),
                   "max_bytes": int(options.max_bytes)},
        "precision": ensemble.precision,
        "scoring_chunk": ensemble.scoring_chunk,
        "device_type": device_type or ensemble.device.split(":")[0],
        "versions": package_versions(("fdcore", "torch", "pillow", "numpy")),
        # only the plugins that provide this run's experts and fusion rule: an unrelated install changes nothing
        "plugins": plugin_set({"experts": sorted({m.expert.name for m in ensemble.members}),
                               "aggregators": [fusion.name]}),
        "input_root": os.path.realpath(options.images),
        "score_format": outputs.SCORE_FORMAT,
    }


# -- decoding in DataLoader workers -----------------------------------------------------------------------------------

class ImageDataset:
    """Map-style dataset: candidate -> resized uint8 arrays (one per geometry) or an error record."""

    def __init__(self, items: Sequence[Candidate], geometries: Sequence[Any], max_pixels: int,
                 max_aspect_ratio: float, fetch_policy: FetchPolicy = FetchPolicy()):
        self.items = list(items)
        self.geometries = list(geometries)
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.fetch_policy = fetch_policy

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return decode_candidate(self.items[index], self.geometries, self.max_pixels, self.max_aspect_ratio,
                                self.fetch_policy)


def decode_candidate(item: Candidate, geometries: Sequence[Any], max_pixels: int, max_aspect_ratio: float,
                     fetch_policy: FetchPolicy) -> dict:
    """One listed item -> a decoded sample (resized arrays per geometry) or an error record; never raises."""
    source = RemoteImage(item.uri, fetch_policy) if item.uri else item.path
    decoded = scoring.decode(source, geometries, max_pixels, max_aspect_ratio, root=item.root)
    return decoded_sample({"name": item.name, "size": item.size, "mtime_ns": item.mtime_ns}, decoded)


def decoded_sample(base: dict, decoded: scoring.Decoded | scoring.Rejected) -> dict:
    """``base`` (name, size, mtime_ns) plus what decoding gave: the resized arrays (and the stat of the bytes read),
    or the reason code."""
    if isinstance(decoded, scoring.Rejected):
        return {**base, "status": "error", "code": decoded.code, "detail": decoded.detail}
    return {**base, "size": decoded.size_bytes, "mtime_ns": decoded.mtime_ns, "status": "ok",
            "info": decoded.info, "arrays": decoded.arrays}


def collate(samples: list[dict]) -> dict:
    """Runs in the worker: stacks the decoded images per geometry, passes failures through."""
    import torch

    decoded = [sample for sample in samples if sample["status"] == "ok"]
    arrays = [torch.from_numpy(batch) for batch in scoring.stack([sample["arrays"] for sample in decoded])]
    return {"decoded": [{k: v for k, v in s.items() if k != "arrays"} for s in decoded], "arrays": arrays,
            "failed": [sample for sample in samples if sample["status"] != "ok"]}


def score_batch(ensemble: Ensemble, batch: dict) -> list[dict]:
    """A collated batch -> its work-log records (sorted by name): per-expert probabilities, or the reason code."""
    records = list(batch["failed"])
    if batch["decoded"]:
        probabilities = ensemble.probabilities_from_resized(batch["arrays"])
        for column, sample in enumerate(batch["decoded"]):
            values = probabilities[:, column]
            if np.isfinite(values).all():
                records.append({**sample, "p": [float(v) for v in values]})
            else:
                records.append({"name": sample["name"], "size": sample["size"], "mtime_ns": sample["mtime_ns"],
                                "status": "error", "code": "non_finite_score",
                                "detail": "expert output is NaN or infinite: "
                                          + ", ".join(f"{n}={v!r}" for n, v in zip(ensemble.names, values))})
    records.sort(key=lambda record: record["name"])
    return records


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers decode and resize with Pillow; torch threads would only compete


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", desc="fdcore predict", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


def score_items(ensemble: Ensemble, items: Sequence[Candidate], log_path: Path, options: PredictOptions,
                show_progress: bool) -> int:
    """Score ``items`` into the work log at ``log_path``; returns how many were processed."""
    import torch

    if not items:
        return 0
    dataset = ImageDataset(items, ensemble.geometries, options.max_pixels, options.max_aspect_ratio,
                           options.fetch_policy())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=False, num_workers=options.workers, collate_fn=collate,
        worker_init_fn=_worker_init if options.workers else None, pin_memory=ensemble.device.startswith("cuda"))
    batches = iter(loader)
    try:
        return log_batches((score_batch(ensemble, batch) for batch in batches), log_path, options, len(items),
                           show_progress)
    finally:
        # Stop the DataLoader workers now, not whenever the iterator is collected: none may outlive a stopped run.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def log_batches(record_batches: Iterable[list[dict]], log_path: Path, options: PredictOptions, total: int,
                show_progress: bool) -> int:
    """Append each batch of work-log records as it comes (an engine's or this process's); returns how many.

    Each batch reaches the OS at once and is fsynced every ``options.save_every`` batches; Ctrl-C / SIGTERM keep
    every batch already written (the exception carries ``processed``); a full disk is a PredictError saying so."""
    throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
    writer = worklog.LogWriter(log_path)
    progress = _progress(total, show_progress)
    processed = 0
    try:
        for batch_number, records in enumerate(record_batches, start=1):
            writer.write(records)
            if batch_number % options.save_every == 0:
                writer.sync()
            processed += len(records)
            if progress is not None:
                progress.update(len(records))
            if throttle:
                time.sleep(throttle)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: every logged batch is kept; say how far the run got
        exc.processed = processed
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise state.PredictError(f"no space left on the device of {log_path.parent} ({exc.strerror}) after "
                                     f"{processed} images of this run were saved; free some space and rerun the same "
                                     "command to continue (a half-written last line is dropped then)") from None
        raise
    finally:
        try:
            writer.close()
        except OSError:
            pass  # the close's fsync fails on a full disk too; what reached the log is kept
        if progress is not None:
            progress.close()
    return processed


# -- planning and merging ---------------------------------------------------------------------------------------------

def _usable(row: dict, candidate: Candidate, n_experts: int, retried_too: bool = False) -> bool:
    if candidate.uri is None and (row["size"] != candidate.size or row["mtime_ns"] != candidate.mtime_ns):
        return False
    if row["status"] == "ok":
        return len(row["p"]) == n_experts
    return retried_too or row["code"] not in RETRIED_CODES


def current_results(rows: Sequence[dict], candidates: Sequence[Candidate], n_experts: int,
                    retried_too: bool = False) -> dict[str, dict]:
    """For each candidate, the last logged outcome that matches its current size and mtime (a URL: its key).

    Failures worth retrying (:data:`RETRIED_CODES`) do not count as results, so the next run tries them again,
    unless ``retried_too`` (what the final files report for this run)."""
    by_name: dict[str, Candidate] = {candidate.name: candidate for candidate in candidates}
    results: dict[str, dict] = {}
    for row in rows:
        candidate = by_name.get(row["name"])
        if candidate is not None and _usable(row, candidate, n_experts, retried_too):
            results[row["name"]] = row
    return results


def _changed_after_listing(rows: Sequence[dict], candidates: Sequence[Candidate],
                           results: dict[str, dict]) -> dict[str, Candidate]:
    """Candidates whose file was rewritten between listing and reading, with the size and mtime they have now.

    A row records the stat of the bytes that were actually read; when that differs from the listing but equals the
    file as it is now, the row is the file's current result and is used (a rerun would reuse it anyway)."""
    logged = {row["name"] for row in rows}
    refreshed = {}
    for candidate in candidates:
        if candidate.name in results or candidate.name not in logged or candidate.uri is not None:
            continue
        try:
            info = os.stat(candidate.path, follow_symlinks=False)
        except OSError:
            continue
        refreshed[candidate.name] = dataclasses.replace(candidate, size=info.st_size, mtime_ns=info.st_mtime_ns)
    return refreshed


@dataclasses.dataclass
class Plan:
    work_dir: Path
    binding: dict
    walk: WalkResult
    todo: list[Candidate]
    reused: int
    torn_tails: int = 0  # found (and dropped) when the run started
    corrupt_lines: int = 0


def plan_run(options: PredictOptions, ensemble: Ensemble, fusion: scoring.Fusion,
             device_type: str | None = None) -> Plan:
    out_dir = Path(options.out)
    binding = build_binding(options, ensemble, fusion, device_type)
    # listed before the work folder is made: a manifest refused here leaves no trace in OUT_DIR
    walk = list_input(options.images, exclude=[out_dir], path_column=options.path_column,
                      id_column=options.id_column)
    work_dir = state.prepare_work_dir(out_dir, binding, options.overwrite)
    logs = worklog.read_logs(work_dir)
    done = current_results(logs.rows, walk.candidates, len(ensemble.members))
    todo = [candidate for candidate in walk.candidates if candidate.name not in done]
    return Plan(work_dir, binding, walk, todo, len(done), logs.torn_tails, logs.corrupt_lines)


def finalise(options: PredictOptions, ensemble: Ensemble, plan: Plan, fusion: scoring.Fusion,
             processed_this_run: int, started: float, world_size: int) -> PredictSummary:
    """Merge the work logs into the final files (atomic, sorted) and summarise."""
    out_dir = Path(options.out)
    logs = worklog.read_logs(plan.work_dir)
    results = current_results(logs.rows, plan.walk.candidates, len(ensemble.members), retried_too=True)
    changed = _changed_after_listing(logs.rows, plan.walk.candidates, results)
    if changed:
        plan.walk.candidates = [changed.get(candidate.name, candidate) for candidate in plan.walk.candidates]
        results = current_results(logs.rows, plan.walk.candidates, len(ensemble.members), retried_too=True)
    logged = {row["name"] for row in logs.rows}
    scored_rows = [results[c.name] for c in plan.walk.candidates if c.name in results
                   and results[c.name]["status"] == "ok"]
    error_rows = [(skip.name, skip.code, skip.detail) for skip in plan.walk.skipped]
    for candidate in plan.walk.candidates:
        row = results.get(candidate.name)
        if row is None and candidate.name in logged:
            error_rows.append((candidate.name, "file_changed", "the file changed after it was last read; rerun the "
                                                               "same command to score what it holds now"))
        elif row is None:
            error_rows.append((candidate.name, "not_scored", "no outcome was recorded (a process stopped early?); "
                                                             "rerun the same command to finish"))
        elif row["status"] == "error":
            error_rows.append((candidate.name, row["code"], row.get("detail", "")))
    probabilities = np.array([row["p"] for row in scored_rows], dtype=np.float64).T.reshape(
        len(ensemble.members), len(scored_rows))
    scores = fusion.scores(ensemble, probabilities)
    calibrated = fusion.calibrated
    if plan.work_dir.name == state.STAGING_DIR:
        plan.work_dir = state.promote(out_dir, plan.work_dir)
    decides = bool(calibrated and ensemble.threshold)
    split = scoring.disagreement(ensemble, fusion, probabilities)
    outputs.write_predictions(out_dir / "predictions.csv",
                              [(row["name"], float(score), row["p"], scoring.decision(float(score), ensemble.threshold)
                                if decides else None, bool(split[index]))
                               for index, (row, score) in enumerate(zip(scored_rows, scores))],
                              ensemble.names if options.per_expert else None, options.excel_safe,
                              calibrated=calibrated, decisions=decides)
    outputs.write_errors(out_dir / "errors.csv", error_rows, options.excel_safe)
    outputs.write_image_info(out_dir / "image_info.csv", [(row["name"], row.get("info", {})) for row in scored_rows],
                             options.excel_safe)
    ignored_codes = {skip.code for skip in plan.walk.skipped if skip.ignored}
    reasons: dict[str, int] = {}
    for _, code, _ in error_rows:
        reasons[code] = reasons.get(code, 0) + 1
    ignored = sum(1 for skip in plan.walk.skipped if skip.ignored)
    skipped = len(error_rows) - ignored
    elapsed = time.time() - started
    if not plan.walk.candidates:
        status, exit_code = "empty", EXIT_USER_ERROR  # pointed at the wrong folder, most likely: not a success
    else:
        status, exit_code = ("complete", EXIT_COMPLETE) if skipped == 0 else ("partial", EXIT_PARTIAL)
    summary = PredictSummary(
        status=status,
        exit_code=exit_code,
        images=len(plan.walk.candidates), scored=len(scored_rows), skipped=skipped, ignored=ignored,
        processed_this_run=processed_this_run, reused=plan.reused, reasons=reasons,
        torn_tails_dropped=plan.torn_tails + logs.torn_tails,
        corrupt_lines_dropped=max(plan.corrupt_lines, logs.corrupt_lines),
        out_dir=str(out_dir), predictions=str(out_dir / "predictions.csv"), errors=str(out_dir / "errors.csv"),
        elapsed_s=round(elapsed, 3), images_per_s=round(processed_this_run / elapsed, 3) if elapsed > 0 else 0.0)
    described_input = _describe_input(options)
    meta = {
        **plan.binding,
        "ensemble_source": ensemble.source,
        "input": described_input,
        "score_definition": f"{fusion.name} of the experts' P(AI-generated)"
                            + (f" with weights {list(fusion.weights)}" if fusion.weights else "")
                            + (", calibrated (calibration.json)" if calibrated else ""),
        "calibrated": calibrated,
        "threshold": ensemble.threshold if calibrated else None,
        "columns": _column_meanings(ensemble, calibrated, decides, options.per_expert,
                                    manifest=described_input["kind"] == "manifest"),
        "counts": {key: getattr(summary, key) for key in ("images", "scored", "skipped", "ignored",
                                                           "processed_this_run", "reused")},
        "reasons": reasons,
        "ignored_reasons": sorted(ignored_codes),
        "status": summary.status,
        "run": {"batch_size": options.batch_size, "workers": options.workers, "world_size": world_size,
                "per_expert": options.per_expert, "save_every": options.save_every,
                "excel_safe": options.excel_safe},
        "started_at": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    outputs.write_meta(out_dir / "predictions.meta.json", meta)
    return summary


def _describe_input(options: PredictOptions) -> dict:
    from fdcore.data.manifest import describe_manifest, input_kind

    if input_kind(options.images) == "folder":
        return {"kind": "folder", "path": os.path.realpath(options.images)}
    return {"kind": "manifest", **describe_manifest(options.images),
            "path_column": options.path_column, "id_column": options.id_column,
            "fetch": {"max_bytes": int(options.max_bytes), "timeout_s": float(options.timeout_s),
                      "retries": int(options.retries), "allow_private_urls": bool(options.allow_private_urls)}}


def _column_meanings(ensemble: Ensemble, calibrated: bool, decides: bool, per_expert: bool,
                     manifest: bool = False) -> dict[str, str]:
    meanings = {"image_name": ("the manifest's id, or the path or URL as written in it" if manifest
                               else "path relative to IMAGES"),
                "score": "fused P(AI-generated)" + (", calibrated" if calibrated else " (not calibrated)")}
    if decides:
        meanings["decision"] = ("ai if score >= threshold.value, real below it, inconclusive inside "
                                "threshold.inconclusive [low, high) when set")
        meanings["disagreement"] = ("yes when the experts, each calibrated and thresholded alone, fall on both sides "
                                    "of the threshold")
    if per_expert:
        for name in ensemble.names:
            meanings[outputs.per_expert_column(name, calibrated)] = f"expert {name}'s raw P(AI-generated)"
    return meanings


# -- the whole run ----------------------------------------------------------------------------------------------------

def run_predict(options: PredictOptions, ensemble: Ensemble | None = None,
                echo: Callable[[str], None] | None = None, engine: Any = None) -> PredictSummary | None:
    """Run ``fdcore predict``. Returns the summary on rank 0 (None on other ranks of a distributed run).

    Args:
        options: the run's options.
        ensemble: an already loaded ensemble (tests, notebooks); loaded from ``options.ensemble`` when None.
        echo: where progress messages go (default stderr, nothing when ``options.quiet``).
        engine: what scores the items still to do, instead of this process's DataLoader (e.g.
            :class:`fdcore.integrations.ray.RayEngine`): an object with ``device_type(requested) -> str`` (where
            its workers run the experts: recorded in the binding, and the default precision follows it) and
            ``score_items(ensemble, items, log_path, options, show_progress) -> int`` that appends the same
            work-log records. Listing, resuming, fusing and the final files stay here, so every engine writes the
            same outputs; this process then loads the ensemble on the CPU.
    """
    started = time.time()
    _check_options(options)
    if ensemble is None and not str(options.ensemble).startswith("hf://") and not Path(options.ensemble).is_dir():
        raise state.PredictError(f"--ensemble {options.ensemble} is not a directory; pass a folder holding "
                                 "ensemble.json, an fdcore expert (expert.json) or a FeatDistill release")
    say = echo or ((lambda message: None) if options.quiet else (lambda message: print(message, file=sys.stderr)))
    out_dir = Path(options.out)
    if out_dir.is_symlink() and not out_dir.exists():
        raise state.PredictError(f"--out {out_dir} is a symbolic link to {os.readlink(out_dir)}, which does not exist; "
                                 "create the target folder or pass another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise state.PredictError(f"--out {out_dir} exists and is not a folder; pass a folder for the outputs")
    lock = state.OutputLock(out_dir)
    launched_rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0
    created = not out_dir.exists()
    if launched_rank == 0:  # lock first: a refused run costs no model loading and writes nothing
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    group = ProcessGroup()
    plan = None
    try:
        # with an engine, the experts run on its workers' device; this process loads the ensemble on the CPU only to
        # describe it and to fuse, at the precision the workers use
        scoring_device = engine.device_type(options.device) if engine is not None else None
        device = "cpu" if engine is not None else resolve_device(options.device)
        group = process_group(device)
        if group.distributed and device.startswith("cuda"):
            device = f"cuda:{group.local_rank}"
        precision = resolve_precision(options.precision, scoring_device or device)
        if group.is_main:
            try:
                if ensemble is None:
                    say(f"loading ensemble {options.ensemble} ({device}, {precision})")
                    ensemble = load_ensemble(options.ensemble, device=device, precision=precision,
                                             skip_hash_check=options.skip_hash_check)
                fusion = scoring.Fusion.resolve(ensemble, options.aggregator, options.weights)
                plan = plan_run(options, ensemble, fusion, scoring_device)
            except BaseException as exc:
                group.broadcast({"error": f"{type(exc).__name__}: {exc}"})
                raise
            group.broadcast({"todo": plan.todo, "work_dir": str(plan.work_dir),
                             "identity": ensemble.identity})
            say(f"{len(plan.walk.candidates)} images, {plan.reused} already scored, {len(plan.todo)} to score"
                + (f" on {group.world_size} processes" if group.distributed else ""))
        else:
            setup = group.broadcast(None)
            if "error" in setup:
                raise state.PredictError(f"rank 0 could not start: {setup['error']}")
            if ensemble is None:
                ensemble = load_ensemble(options.ensemble, device=device, precision=precision,
                                         skip_hash_check=options.skip_hash_check)
            if ensemble.identity != setup["identity"]:
                raise state.PredictError(f"rank {group.rank} loaded a different ensemble than rank 0 "
                                         f"({ensemble.identity[:12]} vs {setup['identity'][:12]}); every process "
                                         "must see the same ensemble files")
            plan = Plan(Path(setup["work_dir"]), {}, WalkResult([], []), setup["todo"], 0)
        mine = shard(plan.todo, group.rank, group.world_size)
        log_path = plan.work_dir / worklog.log_name(group.rank, group.world_size)
        if engine is not None:
            if group.distributed:
                raise state.PredictError("an engine (--engine ray) schedules its own workers; launch it as one "
                                         "process, not with torchrun/accelerate")
            processed = engine.score_items(ensemble, mine, log_path, options, show_progress=not options.quiet)
        else:
            processed = score_items(ensemble, mine, log_path, options,
                                    show_progress=group.is_main and not options.quiet)
        group.barrier()
        if not group.is_main:
            return None
        try:
            summary = finalise(options, ensemble, plan, fusion,
                               processed_this_run=len(plan.todo) if group.distributed else processed,
                               started=started, world_size=group.world_size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise state.PredictError(f"no space left on the device of {out_dir} ({exc.strerror}) while writing the "
                                     "final files; every result is saved in the work log and each previous final "
                                     "file is intact (they are replaced atomically); free some space and rerun the "
                                     "same command") from None
        say(summary.line())
        return summary
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        if plan is None or not group.is_main:
            raise PredictInterrupted(signum, f"stopped by {name} before scoring started; nothing was scored")
        done = getattr(exc, "processed", 0)
        raise PredictInterrupted(signum, f"stopped by {name}: {plan.reused + done} of {len(plan.walk.candidates)} "
                                         f"images have saved results ({done} this run) in {plan.work_dir}; rerun "
                                         "the same command to continue where it stopped") from None
    finally:
        lock.release()
        group.close()
        if created and launched_rank == 0:
            try:
                out_dir.rmdir()  # a run refused before writing anything leaves no empty output folder behind
            except OSError:
                pass
