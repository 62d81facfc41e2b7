"""Scoring on a Ray cluster with Ray Data: ``fdcore predict --engine ray`` and a callable class for ``map_batches``.

Two entries, one scoring path (:mod:`fdcore.scoring` through :func:`fdcore.predict.runner.decode_candidate` and
:func:`fdcore.predict.runner.score_batch`, so the pixel policy, the limits, the URL fetching and the fixed scoring
chunks are those of single-process ``fdcore predict``, and so are the scores):

* :class:`EnsembleScorer` — for your own pipelines::

      import ray
      from fdcore.integrations.ray import EnsembleScorer

      items = ray.data.read_parquet("s3://bucket/manifest.parquet")          # a column "path": paths or URLs
      scored = items.map_batches(EnsembleScorer, fn_constructor_kwargs={"ensemble": "hf://org/detector"},
                                 batch_size=32, num_gpus=1,
                                 compute=ray.data.ActorPoolStrategy(size=4))
      scored.write_parquet("s3://bucket/scores/")

  Each actor loads the ensemble once. Every input row comes back with ``status`` (``ok`` / ``error``), ``code`` and
  ``detail`` (the reason codes of docs/predict.md), ``score`` (fused P(AI-generated), NaN for errors),
  ``p_<expert>`` (each expert's raw probability) and, when the ensemble carries a calibrated threshold,
  ``decision``. A bad image never fails the job. Set-level fusion rules (``rank-mean``) need every score at once
  and are refused: use ``fdcore predict --engine ray``, which fuses on the driver.

* :class:`RayEngine` — what ``fdcore predict --engine ray`` plugs into :func:`fdcore.predict.run_predict`: the
  driver lists the input, resumes from the work log, sends the items still to score to a pool of actors and appends
  their records to the work log as they stream back; fusion and the final files are the single-process code. An
  interrupted run resumes like any other (a rerun sends only what is not logged yet).

This module imports neither torch nor ray until used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

from fdcore.errors import FdcoreError

# Columns of an input batch that name the image (first one present wins), and the column of raw bytes.
LOCATION_COLUMNS = ("path", "uri", "url")
BYTES_COLUMN = "bytes"
MAX_BLOCKS = 2000


class RayEngineError(FdcoreError):
    """Ray is missing, the cluster cannot be reached, or an actor could not load the ensemble."""


def _require_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise RayEngineError("the Ray engine needs Ray Data: run `pip install 'fdcore[ray]'` (or "
                             "`pip install 'ray[data]'`)") from None
    import ray

    return ray


class EnsembleScorer:
    """A callable class for ``ray.data.Dataset.map_batches``: one ensemble per actor, one row out per row in.

    Args:
        ensemble: an ensemble folder reachable from every node (a shared file system), or ``hf://ORG/NAME[@REV]``.
        device / precision: as ``fdcore predict`` (``auto``: the actor's GPU when Ray gave it one).
        aggregator / weights: the fusion rule (default: the ensemble's); set-level rules are refused.
        max_pixels / max_aspect_ratio: the image limits of ``fdcore predict``.
        fetch: a :class:`fdcore.remote.FetchPolicy` (or its fields as a dict) for URL rows.
        expected_identity: refuse to start unless the loaded ensemble has this identity (the driver's).
        records: internal, for :class:`RayEngine`: return work-log records instead of columns.
    """

    def __init__(self, ensemble: str, device: str = "auto", precision: str | None = None,
                 aggregator: str | None = None, weights: Sequence[float] | None = None,
                 max_pixels: int | None = None, max_aspect_ratio: float | None = None,
                 fetch: Any = None, expected_identity: str | None = None, records: bool = False):
        from fdcore import scoring
        from fdcore.ensemble import resolve_device, resolve_precision
        from fdcore.ensemble_io import load_ensemble
        from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
        from fdcore.remote import FetchPolicy

        device = resolve_device(device)
        self.ensemble = load_ensemble(str(ensemble), device=device, precision=resolve_precision(precision, device))
        if expected_identity is not None and self.ensemble.identity != expected_identity:
            raise RayEngineError(f"this node loaded a different ensemble from {ensemble} "
                                 f"({self.ensemble.identity[:12]} instead of {expected_identity[:12]}); every node "
                                 "must see the same ensemble files")
        self.fusion = scoring.Fusion.resolve(self.ensemble, aggregator, weights)
        if self.fusion.set_level and not records:
            raise RayEngineError(f"the fusion rule {self.fusion.name!r} needs every score at once; score with "
                                 "`fdcore predict --engine ray`, which fuses on the driver, or pick a per-image rule")
        self.max_pixels = int(max_pixels or DEFAULT_MAX_PIXELS)
        self.max_aspect_ratio = float(max_aspect_ratio or DEFAULT_MAX_ASPECT_RATIO)
        self.fetch = fetch if isinstance(fetch, FetchPolicy) else FetchPolicy(**(fetch or {}))
        self.records = records

    def __call__(self, batch: dict) -> dict:
        if self.records:
            return {"record": _object_array([json.dumps(record) for record in self._score(_candidates(batch))])}
        return self._columns(batch)

    def _score(self, candidates) -> list[dict]:
        from fdcore.predict.runner import collate, decode_candidate, score_batch

        samples = [decode_candidate(candidate, self.ensemble.geometries, self.max_pixels, self.max_aspect_ratio,
                                    self.fetch) for candidate in candidates]
        return score_batch(self.ensemble, collate(samples))

    def _columns(self, batch: dict) -> dict:
        import numpy as np

        from fdcore import scoring
        from fdcore.predict.outputs import per_expert_column
        from fdcore.predict.runner import collate, decode_candidate, decoded_sample, score_batch

        count = len(next(iter(batch.values()))) if batch else 0
        location = next((column for column in LOCATION_COLUMNS if column in batch), None)
        if location is None and BYTES_COLUMN not in batch:
            raise RayEngineError(f"a batch needs a {' / '.join(LOCATION_COLUMNS)} column (paths or URLs) or a "
                                 f"{BYTES_COLUMN!r} column (encoded images); it has {', '.join(batch) or 'none'}")
        samples = []
        for index in range(count):
            name = str(index)
            if BYTES_COLUMN in batch and batch[BYTES_COLUMN][index] is not None:
                decoded = scoring.decode(bytes(batch[BYTES_COLUMN][index]), self.ensemble.geometries, self.max_pixels,
                                         self.max_aspect_ratio)
                samples.append(decoded_sample({"name": name, "size": 0, "mtime_ns": 0}, decoded))
                continue
            value = batch[location][index] if location else None
            candidate = _candidate_for(name, value)
            samples.append(candidate if isinstance(candidate, dict) else decode_candidate(
                candidate, self.ensemble.geometries, self.max_pixels, self.max_aspect_ratio, self.fetch))

        by_row = {int(record["name"]): record for record in score_batch(self.ensemble, collate(samples))}
        ok = [index for index in range(count) if by_row[index]["status"] == "ok"]
        probabilities = np.array([by_row[index]["p"] for index in ok], dtype=np.float64).T.reshape(
            len(self.ensemble.members), len(ok))
        scores = self.fusion.scores(self.ensemble, probabilities) if ok else np.zeros(0)
        out = {key: value for key, value in batch.items() if key != BYTES_COLUMN}
        out["status"] = _object_array([by_row[index]["status"] for index in range(count)])
        out["code"] = _object_array([by_row[index].get("code", "") for index in range(count)])
        out["detail"] = _object_array([by_row[index].get("detail", "") for index in range(count)])
        score_column = np.full(count, np.nan)
        score_column[ok] = scores
        out["score"] = score_column
        for member, name in enumerate(self.ensemble.names):
            column = np.full(count, np.nan)
            column[ok] = probabilities[member]
            out[per_expert_column(name, self.fusion.calibrated)] = column
        if self.fusion.calibrated and self.ensemble.threshold:
            decisions = [""] * count
            for position, index in enumerate(ok):
                decisions[index] = scoring.decision(float(scores[position]), self.ensemble.threshold)
            out["decision"] = _object_array(decisions)
        return out


def _candidate_for(name: str, value: Any):
    """A user's path/URL cell -> a Candidate (:func:`fdcore.data.manifest.locate_item`, relative paths from the
    actor's working folder), or an error sample for a cell that names nothing usable."""
    from fdcore.data.manifest import locate_item
    from fdcore.data.sources import DataError
    from fdcore.walk import Skipped

    base = {"name": name, "size": 0, "mtime_ns": 0, "status": "error"}
    if not isinstance(value, str) or not value.strip():
        return {**base, "code": "not_found", "detail": f"no path or URL in this row ({value!r})"}
    try:
        item = locate_item(name, value.strip(), os.getcwd())
    except DataError as exc:
        return {**base, "code": "not_found", "detail": str(exc)}
    return {**base, "code": item.code, "detail": item.detail} if isinstance(item, Skipped) else item


def _bound_scorer(settings: dict):
    """:class:`EnsembleScorer` with its settings bound in the class itself: they travel with the pickled class, so
    a restarted actor never depends on constructor arguments kept in the object store (ray-project/ray#53727)."""

    class BoundEnsembleScorer(EnsembleScorer):
        def __init__(self):
            super().__init__(**settings)

    return BoundEnsembleScorer


def _object_array(values: list):
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _candidates(batch: dict):
    """The engine's batch columns -> the Candidates the driver listed."""
    from fdcore.walk import Candidate

    count = len(batch["name"])
    return [Candidate(str(batch["name"][i]), str(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i]),
                      str(batch["root"][i]) or None, str(batch["uri"][i]) or None) for i in range(count)]


@dataclasses.dataclass
class RayEngine:
    """``fdcore predict --engine ray``: score on Ray Data actors (see the module docstring).

    Args:
        address: the cluster (``ray://HOST:10001``, ``auto``); None: ``RAY_ADDRESS`` if set, else a local Ray
            started for this run (or the one this process already started).
        num_actors: actors in the pool, each with one copy of the ensemble (default: one per GPU when
            ``gpus_per_actor`` > 0, else 1).
        gpus_per_actor: GPUs reserved per actor (fractions share a GPU).
        cpus_per_actor: CPUs reserved per actor (decoding and, without a GPU, the experts run there).
    """

    address: str | None = None
    num_actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def connect(self):
        import logging

        ray = _require_ray()
        # fdcore's own progress bar and summary say what the run does; Ray Data's per-dataset log lines and bars
        # would repeat it on stderr (its full logs stay under the session's log folder)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            _check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", configure_logging=True)
            except Exception as exc:  # an unreachable cluster, a bad address: say which
                raise RayEngineError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                                     f"{type(exc).__name__}: {exc}") from None
        return ray

    def device_type(self, requested: str = "auto") -> str:
        """Where the actors run the experts: ``cuda`` with ``gpus_per_actor``, else ``cpu`` (recorded in the binding,
        and what the default precision follows: fp16 on GPUs, fp32 on CPUs)."""
        if requested == "cuda" and not self.gpus_per_actor:
            raise RayEngineError("--device cuda with --engine ray needs --gpus-per-actor (the GPUs each actor "
                                 "reserves; Ray gives an actor no GPU otherwise)")
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    def actors(self, ray) -> int:
        if self.num_actors:
            return int(self.num_actors)
        if self.gpus_per_actor > 0:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            if gpus <= 0:
                raise RayEngineError("--gpus-per-actor was given but the Ray cluster has no GPU")
            return max(1, int(gpus // self.gpus_per_actor))
        return 1

    def score_items(self, ensemble, items, log_path, options, show_progress: bool) -> int:
        from fdcore.predict.runner import log_batches

        if not items:
            return 0
        ray = self.connect()
        rows = [{"name": item.name, "path": item.path, "size": int(item.size), "mtime_ns": int(item.mtime_ns),
                 "root": item.root or "", "uri": item.uri or ""} for item in items]
        from fdcore.hub import hub_reference_of

        # an ensemble fetched from the Hub is fetched again by each node, at the commit verified here
        source = hub_reference_of(ensemble.source or options.ensemble) or ensemble.source or options.ensemble
        # about one block per batch, so records stream back as batches finish; capped, as Ray schedules per block
        blocks = min(max(1, math.ceil(len(rows) / options.batch_size)), MAX_BLOCKS)
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        settings = {"ensemble": str(source), "device": self.device_type(options.device),
                    "precision": ensemble.precision, "aggregator": options.aggregator, "weights": options.weights,
                    "max_pixels": options.max_pixels, "max_aspect_ratio": options.max_aspect_ratio,
                    "fetch": dataclasses.asdict(options.fetch_policy()), "expected_identity": ensemble.identity,
                    "records": True}
        scored = dataset.map_batches(
            _bound_scorer(settings), batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors(ray)), num_gpus=self.gpus_per_actor or None,
            num_cpus=self.cpus_per_actor)

        def record_batches():
            try:
                for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                    yield [json.loads(text) for text in batch["record"]]
            except (KeyboardInterrupt, FdcoreError):
                raise
            except Exception as exc:
                raise RayEngineError(f"the Ray job failed: {_failure_message(exc)}; what was scored before is saved, "
                                     "rerun the same command to continue") from None

        return log_batches(record_batches(), log_path, options, len(items), show_progress)


# Ray's own connection attempt retries for minutes; an address that refuses or ignores a TCP connection is reported
# after this many seconds instead.
CONNECT_PROBE_S = 10.0


def _check_reachable(address: str | None) -> None:
    """Refuse at once a cluster address nothing answers on (``auto``, ``local`` and None are Ray's to resolve)."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_S).close()
    except OSError as exc:
        raise RayEngineError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check --ray-address "
                             "or RAY_ADDRESS: the head node's address and GCS port (6379 by default), or "
                             "ray://HEAD:10001 for Ray Client; nothing was scored or written") from None


_RAISED_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _failure_message(exc: BaseException) -> str:
    """What went wrong on a worker, in one line: Ray wraps a worker's exception (an actor's constructor included)
    in its own types and keeps the original only as the text of the remote traceback, whose last line says it."""
    seen, found = set(), None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FdcoreError):
            return str(exc)
        lines = [match for match in (_RAISED_LINE.match(line.strip()) for line in str(exc).splitlines()) if match]
        if lines and found is None:
            name, message = lines[-1].groups()
            found = f"{name.rsplit('.', 1)[-1]}: {message}"
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return found or "a Ray worker failed (see the Ray logs)"


def run_predict_ray(options, engine: RayEngine | None = None, echo=None):
    """``fdcore predict --engine ray``: :func:`fdcore.predict.run_predict` with a :class:`RayEngine`."""
    from fdcore.predict import run_predict

    engine = engine or RayEngine()
    engine.connect()  # before the output folder is touched: a wrong address costs nothing
    return run_predict(options, echo=echo, engine=engine)
