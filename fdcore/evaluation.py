"""Scoring a labelled dataset clean and under degradations: the engine of `fdcore evaluate` and `fdcore calibrate`.

Each image is decoded once (the prediction pixel policy), then turned into its variants: the clean image, ``copies``
draws of a degradation suite (a registered policy such as ``ntire2026-test-like``: 1-5 chained operators from
different groups, applied identically to real and fake images), and optionally a per-operator sweep over levels
1..5. Every variant's randomness comes from (seed, image index, variant), so the same command gives the same
degraded images and the same records, whatever the number of workers. Variants are resized once per distinct
expert geometry in DataLoader workers and scored in batches.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fdcore.errors import FdcoreError

DEFAULT_SUITE = "ntire2026-test-like"


class EvaluationError(FdcoreError):
    """An evaluation cannot run as asked."""


@dataclasses.dataclass(frozen=True)
class VariantPlan:
    """Which variants of every image to score."""

    clean: bool = True
    suite: str | None = DEFAULT_SUITE
    copies: int = 1
    sweep_operators: tuple[str, ...] = ()
    sweep_levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _suite_policy(plan: VariantPlan):
    if not plan.suite:
        return None
    from fdcore.degradations.api import load_policy

    return load_policy(plan.suite)


class VariantDataset:
    """Torch-style map dataset: item ``i`` is every variant of image ``i``, resized per ensemble geometry."""

    def __init__(self, rows, geometries, plan: VariantPlan):
        self.rows = rows
        self.geometries = list(geometries)
        self.plan = plan
        self._policy = None  # loaded lazily in each worker

    def __len__(self) -> int:
        return len(self.rows)

    def _variants(self, index: int, pixels: np.ndarray):
        from fdcore.degradations.api import apply_policy, degrade

        plan = self.plan
        if plan.clean:
            yield {"variant": "clean", "condition": "clean", "degradation": "", "severity": 0.0, "record": None}, pixels
        if plan.suite:
            if self._policy is None:
                self._policy = _suite_policy(plan)
            for copy in range(plan.copies):
                degraded, record = apply_policy(pixels, self._policy, seed=plan.seed, sample_id=f"{index}:{copy}")
                steps = record["ops"]
                chain = "+".join(step["op"] for step in steps)
                severity = max((float(step["level"] if step["level"] is not None else 5 * step["severity"])
                                for step in steps), default=0.0)
                yield ({"variant": f"{plan.suite}#{copy}", "condition": "degraded", "degradation": chain or "(none)",
                        "severity": severity, "record": record}, degraded)
        for operator in plan.sweep_operators:
            for level in plan.sweep_levels:
                degraded = degrade(pixels, operator, level=level, seed=plan.seed, sample_id=index)
                yield ({"variant": f"{operator}@{level}", "condition": "sweep", "degradation": operator,
                        "severity": float(level),
                        "record": {"op": operator, "level": level, "seed": plan.seed, "sample_id": index}}, degraded)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        from fdcore.data.torch_dataset import load_row_image
        from fdcore.preprocess import resize_for_geometries
        from fdcore.errors import FdcoreError as _Refused

        row = self.rows[int(index)]
        base = {"index": int(index), "path": row["path"], "label": int(row["label"]),
                "generator": row.get("generator") or "", "source": row.get("source") or ""}
        try:
            pixels = np.asarray(load_row_image(row), dtype=np.uint8)
        except _Refused as exc:
            return {**base, "error": str(exc), "variants": []}
        variants = []
        for meta, image in self._variants(int(index), pixels):
            picture = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
            variants.append({**meta, "resized": resize_for_geometries(picture, self.geometries)})
        return {**base, "error": None, "variants": variants}


def _identity_collate(items):
    return items


def score_dataset(ensemble, rows, plan: VariantPlan, aggregator: str | None = None,
                  weights: Sequence[float] | None = None, batch_size: int = 16, workers: int = 0,
                  use_calibration: bool = True, progress=None) -> tuple[list[dict], list[dict]]:
    """Score every variant of every row (``progress``: optional tqdm-like bar, advanced per image). Returns ``(records, skipped)`` in the record format of
    :mod:`fdcore.metrics.records` (one record per scored variant; ``expert:<name>`` columns per expert)."""
    import torch

    from fdcore.scoring import Fusion, stack

    fusion = Fusion.resolve(ensemble, aggregator, weights, use_calibration)
    dataset = VariantDataset(rows, ensemble.geometries, plan)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=_identity_collate)
    skipped, pending, scored, columns = [], [], [], []

    def flush():
        if not pending:
            return
        columns.append(ensemble.probabilities_from_resized(stack([variant["resized"] for _, variant in pending])))
        scored.extend((item, {key: value for key, value in variant.items() if key != "resized"})
                      for item, variant in pending)
        pending.clear()

    for [item] in loader:
        if item["error"]:
            skipped.append({"path": item["path"], "variant": "*", "reason": item["error"]})
        for variant in item["variants"]:
            pending.append((item, variant))
            if len(pending) >= batch_size:
                flush()
        if progress is not None:
            progress.update(1)
    flush()
    # Fused once over every scored variant, as predict fuses over every image: a set-level rule (rank-mean) ranks
    # against the whole evaluation, never against whichever variants shared a batch.
    probabilities = np.concatenate(columns, axis=1) if columns else np.zeros((len(ensemble.names), 0))
    fused = fusion.raw_scores(ensemble, probabilities)
    records = []
    for column, (item, variant) in enumerate(scored):
        if not np.isfinite(fused[column]):
            skipped.append({"path": item["path"], "variant": variant["variant"], "reason": "non_finite_score"})
            continue
        score = float(fused[column])
        record = {"image_id": f"{item['path']}@{variant['variant']}", "path": item["path"],
                  "label": item["label"], "generator": item["generator"], "source": item["source"],
                  "condition": variant["condition"], "degradation": variant["degradation"],
                  "severity": variant["severity"], "raw_score": score, "score": score,
                  "degradation_record": json.dumps(variant["record"], sort_keys=True)}
        for name, value in zip(ensemble.names, probabilities[:, column]):
            record[f"expert:{name}"] = float(value)
        records.append(record)
    if fusion.calibrated and records:
        calibrated, _ = ensemble.calibrated(np.array([record["raw_score"] for record in records]), fusion.name)
        for record, value in zip(records, calibrated):
            record["score"] = float(value)
    return records, skipped


def decision_counts(records: list[dict], threshold: dict) -> dict:
    """The calibrated decisions (ai / real / inconclusive) against the labels, per condition: the confusion matrix
    a reviewer reads, and how often the inconclusive band defers."""
    from fdcore.scoring import decision

    result = {}
    for condition in sorted({record["condition"] for record in records}):
        table = {outcome: {"real": 0, "fake": 0} for outcome in ("ai", "real", "inconclusive")}
        for record in records:
            if record["condition"] == condition:
                table[decision(record["score"], threshold)]["fake" if record["label"] == 1 else "real"] += 1
        total = sum(sum(row.values()) for row in table.values())
        decided_fake = table["ai"]["fake"] + table["real"]["fake"]
        decided_real = table["ai"]["real"] + table["real"]["real"]
        result[condition] = {
            "confusion": table, "n": total,
            "inconclusive_share": (table["inconclusive"]["real"] + table["inconclusive"]["fake"]) / total if total else None,
            "tpr_when_decided": table["ai"]["fake"] / decided_fake if decided_fake else None,
            "fpr_when_decided": table["ai"]["real"] / decided_real if decided_real else None,
        }
    return {"threshold": threshold.get("value"), "inconclusive": threshold.get("inconclusive"), **result}


class _AtThreshold:
    """An ensemble seen at a plain threshold on its fused score's scale, for an evaluation without a stored one: the
    members go through the calibration only when the fusion applies it (what :func:`fdcore.scoring.disagreement`
    needs from an ensemble)."""

    def __init__(self, ensemble, fusion, value: float):
        self.members = ensemble.members
        self.threshold = {"value": float(value)}
        self._ensemble, self._calibrated = ensemble, fusion.calibrated

    def calibrated(self, scores, aggregator: str | None = None):
        if self._calibrated:
            return self._ensemble.calibrated(scores, aggregator)
        return np.asarray(scores, dtype=np.float64), False


def member_agreement(ensemble, fusion, records: list[dict], threshold: float) -> dict | None:
    """How the members agree across the decision threshold, per condition: how often they split (members on both
    sides: :func:`fdcore.scoring.disagreement`, predict's disagreement column) and how often each member alone sits on
    the other side from the ensemble's fused score. The threshold is the ensemble's calibrated one when the fusion
    uses it, else ``threshold`` on the fused score's scale. None for a one-member ensemble."""
    from fdcore.scoring import disagreement

    names = list(ensemble.names)
    if len(names) < 2 or not records:
        return None
    judge, rule = ensemble, fusion
    if not (fusion.calibrated and ensemble.threshold):
        judge, rule = _AtThreshold(ensemble, fusion, threshold), dataclasses.replace(fusion, calibrated=True)
    probabilities = np.array([[record[f"expert:{name}"] for record in records] for name in names], dtype=np.float64)
    fused = np.array([record["raw_score"] for record in records], dtype=np.float64)
    split = disagreement(judge, rule, probabilities)
    # a member against the ensemble: the same rule over two rows, the member and the fused score
    against = {name: disagreement(judge, rule, np.stack([probabilities[row], fused]))
               for row, name in enumerate(names)}
    conditions = np.array([record["condition"] for record in records], dtype=object)
    result = {"threshold": float(judge.threshold["value"]), "calibrated": bool(fusion.calibrated),
              "rule": "a member is called AI-generated when its probability, put through the ensemble's calibration "
                      "when the fusion applies it, is >= threshold"}
    for condition in sorted(set(conditions)):
        mask = conditions == condition
        result[condition] = {"n": int(mask.sum()), "members_split": int(split[mask].sum()),
                             "other_side": {name: int(against[name][mask].sum()) for name in names}}
    return result


def load_rows(data: Sequence[str] | str, seed: int = 0, max_images: int | None = None):
    """Every labelled row of a data spec once (weights ignored), optionally a seeded stratified subset."""
    from fdcore.data import resolve_data_spec

    spec = resolve_data_spec(data, seed=seed)
    rows = spec.load_all()
    if max_images and len(rows) > max_images:
        from fdcore.data.split import split_indices

        labels = rows["label"]
        _, chosen = split_indices([(label,) for label in labels], max_images / len(rows), seed)
        rows = rows.select(chosen)
    return spec, rows


def _set_total(progress, total: int) -> None:
    """Tell a tqdm-like progress bar how many images there are, once they are known."""
    if progress is not None and hasattr(progress, "total"):
        progress.total = total
        progress.refresh()


def write_records_csv(records: list[dict], path: Path) -> None:
    """All records as CSV (one row per scored variant, with the exact degradation record as JSON)."""
    from fdcore.csvfile import write_csv_atomic
    from fdcore.fileio import write_text_atomic

    if not records:
        write_text_atomic(path, "")
        return
    columns = list(records[0])
    write_csv_atomic(path, columns, ([f"{record[key]:.8f}" if isinstance(record[key], float) else record[key]
                                      for key in columns] for record in records))


def run_evaluation(ensemble_path, data, out_dir, plan: VariantPlan, aggregator: str | None = None,
                   weights: Sequence[float] | None = None, device: str = "auto", precision: str | None = None,
                   batch_size: int = 16, workers: int = 0, bootstrap: int = 1000, threshold: float = 0.5,
                   use_calibration: bool = True, max_images: int | None = None, title: str | None = None,
                   progress=None) -> dict:
    """`fdcore evaluate`: score, compute metrics, write metrics.json, records.csv, report.md/html and plots."""
    from fdcore import __version__
    from fdcore.ensemble_io import load_ensemble
    from fdcore.metrics import compute_metrics
    from fdcore.report import write_report

    from fdcore import registry
    from fdcore.scoring import Fusion

    if aggregator is not None:
        registry.get_aggregator(aggregator)  # a typo is reported now, not after loading the ensemble
    ensemble = load_ensemble(ensemble_path, device=device, precision=precision)
    fusion = Fusion.resolve(ensemble, aggregator, weights, use_calibration)
    spec, rows = load_rows(data, seed=plan.seed, max_images=max_images)
    _set_total(progress, len(rows))
    records, skipped = score_dataset(ensemble, rows, plan, aggregator=aggregator, weights=weights,
                                     batch_size=batch_size, workers=workers, use_calibration=use_calibration,
                                     progress=progress)
    calibrated = fusion.calibrated
    if not records:
        raise EvaluationError(f"no image of {data} could be scored ({len(skipped)} skipped); see the reasons with "
                              "fdcore data check")
    operating_point = ensemble.threshold if calibrated else None
    metrics = compute_metrics(records, threshold=threshold, bootstrap=bootstrap, seed=plan.seed,
                              operating_point=operating_point)
    if operating_point is not None:
        metrics["decisions"] = decision_counts(records, operating_point)
    metrics["agreement"] = member_agreement(ensemble, fusion, records, metrics["settings"]["threshold"])
    metrics["evaluation"] = {
        "ensemble": ensemble.describe(),
        "aggregator": aggregator or ensemble.aggregator,
        "weights": list(weights) if weights is not None else None,
        "calibrated": calibrated,
        "precision": ensemble.precision,
        "variants": plan.to_dict(),
        "data": {"spec": spec.to_dict(), "counts": spec.counts},
        "images": len(rows),
        "skipped": skipped,
        "fdcore": __version__,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_records_csv(records, out_dir / "records.csv")
    write_report(metrics, records, out_dir, title=title or f"fdcore evaluation: {Path(ensemble_path).name}")
    return metrics


def run_calibration(ensemble_path, data, plan: VariantPlan, method: str = "temperature",
                    target_fpr: float | None = 0.01, aggregator: str | None = None, device: str = "auto",
                    precision: str | None = None, batch_size: int = 16, workers: int = 0,
                    max_images: int | None = None, progress=None, inconclusive: tuple[float, float] | None = None):
    """`fdcore calibrate`: fit on validation data, store calibration.json with the ensemble, point ensemble.json
    at it (and at the threshold, with its optional ``inconclusive`` band of calibrated scores). Returns the
    Calibration."""
    from fdcore.calibration import fit_calibration
    from fdcore.ensemble_io import ENSEMBLE_FILE, load_ensemble, read_ensemble_json, write_ensemble

    directory = Path(ensemble_path)
    if not (directory / ENSEMBLE_FILE).is_file():
        from fdcore.expert_io import CONFIG_FILE

        if (directory / CONFIG_FILE).is_file():
            raise EvaluationError(f"{directory} is a single expert; calibration is stored with an ensemble: create "
                                  f"one first with `fdcore ensemble create ENSEMBLE_DIR --expert {directory}`, then "
                                  "calibrate ENSEMBLE_DIR")
        raise EvaluationError(f"{directory} has no {ENSEMBLE_FILE}: calibration is stored with an fdcore ensemble "
                              "(convert a FeatDistill release with `fdcore expert import-featdistill` first)")
    ensemble = load_ensemble(directory, device=device, precision=precision)
    spec, rows = load_rows(data, seed=plan.seed, max_images=max_images)
    _set_total(progress, len(rows))
    records, skipped = score_dataset(ensemble, rows, plan, aggregator=aggregator, batch_size=batch_size,
                                     workers=workers, use_calibration=False, progress=progress)
    if not records:
        raise EvaluationError(f"no image of {data} could be scored ({len(skipped)} skipped)")
    scores = np.array([record["raw_score"] for record in records])
    labels = np.array([record["label"] for record in records])
    calibration = fit_calibration(scores, labels, method=method, target_fpr=target_fpr,
                                  description=json.dumps(spec.to_dict(), sort_keys=True, default=str))
    calibration.fitted_on["aggregator"] = aggregator or ensemble.aggregator
    if inconclusive is not None:
        low, high = (float(value) for value in inconclusive)
        if calibration.threshold is None:
            raise EvaluationError("--inconclusive needs a threshold: give --target-fpr")
        value = calibration.threshold["value"]
        if not low <= value <= high:
            raise EvaluationError(f"--inconclusive {low:g},{high:g} does not contain the chosen threshold {value:.6f} "
                                  "(calibrated scale); choose a band around it")
        calibrated_scores = calibration.apply(scores)
        calibration.threshold["inconclusive"] = [low, high]
        calibration.threshold["inconclusive_share"] = float(np.mean((calibrated_scores >= low)
                                                                    & (calibrated_scores < high)))
    calibration.fitted_on["variants"] = plan.to_dict()
    calibration.save(directory / "calibration.json")
    document = read_ensemble_json(directory)
    write_ensemble(directory, document["experts"], aggregator=aggregator or document.get("aggregator") or "mean",
                   card=document.get("card"), calibration="calibration.json", threshold=calibration.threshold)
    return calibration
