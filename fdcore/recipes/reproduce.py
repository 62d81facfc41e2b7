"""A miniature reproduction of FeatDistill's Table 2 on real AI-generated images, on CPU.

What it does, on a labelled folder such as ``../shared/data/aigc-sd1x`` (Stable Diffusion 1.x images vs COCO and
ImageNet photographs, 512x512 JPEG, with a ``manifest.csv``):

1. splits it, stratified by class and origin and seeded, into a training part and a held-out part (near-duplicate
   images, found by a perceptual hash, never straddle the two); the split is written as two manifests that point at
   the original files (nothing is copied);
2. for every installed transformer expert architecture (the CLIP and SigLIP plugins), builds a small
   randomly initialised backbone (pretrained CLIP/SigLIP weights cannot be downloaded here) and trains it with the
   two-stage recipe, with and without degradation training (the ``featdistill`` policy or none): stage 1 (BCE),
   then from that same stage-1 model stage 2 with ``dense-l2`` (paper Eq. 2) and, separately, with ``crd``;
3. scores the held-out part once, clean and under the ``ntire2026-test-like`` suite, with every trained variant
   (each image decoded and degraded once, identically for every variant), and reports clean and robust ROC AUC
   (the NTIRE pooled metric) with bootstrap intervals for each variant, for the two-architecture ensemble of every
   configuration, and for the main configuration's ensemble under every registered aggregator.

Experts see **centre crops at native resolution** (``resize="crop"``) and train on random native-resolution crops:
resizing a 512 px image down to a small model's input would low-pass away exactly the pixel-level traces that a
from-scratch model can learn from.

Launch (it resumes: finished runs are kept, an interrupted one continues from its checkpoint):

    python recipes/reproduce.py --data ../shared/data/aigc-sd1x --out runs/reproduce
    python recipes/reproduce.py --data ../shared/data/aigc-sd1x --out runs/reproduce-smoke --size smoke

Outputs: ``OUT/data/{train,heldout}.csv``, ``OUT/runs/<variant>/`` (training runs), ``OUT/ensemble/`` (the main
configuration's ensemble, usable by ``fdcore predict``), ``OUT/records.csv`` (every score), ``OUT/results.json``
and ``OUT/results.md`` (the tables).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from fdcore.demo import demo_experts as architectures  # every installed transformer expert
from fdcore.errors import FdcoreError

HELDOUT_FRACTION = 0.2
SUITE = "ntire2026-test-like"
MAIN_POLICY, MAIN_DISTILLER = "featdistill", "dense-l2"


@dataclasses.dataclass(frozen=True)
class ReproductionSize:
    image_size: int
    patch_size: int
    hidden: int
    layers: int
    heads: int
    stage1_epochs: int
    stage2_epochs: int
    batch_size: int
    lr: float
    copies: int            # degraded copies of each held-out image
    bootstrap: int
    max_per_class: int | None
    npr: dict              # the NPR expert's constructor options
    npr_epochs: int
    npr_lr: float


SIZES = {
    "full": ReproductionSize(image_size=160, patch_size=16, hidden=128, layers=4, heads=4, stage1_epochs=8,
                             stage2_epochs=2, batch_size=32, lr=5e-4, copies=2, bootstrap=500, max_per_class=None,
                             npr={"crop_size": 96, "crops": 36}, npr_epochs=40, npr_lr=1e-3),
    "smoke": ReproductionSize(image_size=64, patch_size=16, hidden=32, layers=2, heads=2, stage1_epochs=1,
                              stage2_epochs=1, batch_size=8, lr=1e-3, copies=1, bootstrap=20, max_per_class=16,
                              npr={"crop_size": 32, "crops": 4, "width": 8, "blocks": [1, 1]}, npr_epochs=1,
                              npr_lr=1e-3),
}
# NPR variants: (name, training policy, seed offset). Stage 1 only: NPR is a one-stage detector in its paper.
NPR_VARIANTS = (("npr-clean", "none", 0), ("npr-clean-seed1", "none", 1), ("npr-jpeg", "jpeg-recompress", 0),
                ("npr-featdistill", "featdistill", 0))
MAIN_NPR = "npr-clean"


class ReproductionError(FdcoreError):
    """The reproduction cannot run as asked."""


# ----------------------------------------------------------------------------------------------------- data split

def split_manifest(data_dir: Path, out_dir: Path, seed: int, max_per_class: int | None = None) -> dict:
    """Write ``out_dir/train.csv`` and ``out_dir/heldout.csv`` (absolute paths, label, generator, source)."""
    from fdcore.data import resolve_data_spec
    from fdcore.data.split import group_keys, split_indices

    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise ReproductionError(f"{manifest} not found: --data must be a folder with a manifest.csv (path,label,...) "
                                "such as ../shared/data/aigc-sd1x")
    dataset = resolve_data_spec(str(manifest)).load()
    with open(manifest, newline="", encoding="utf-8") as handle:
        origin = {str((data_dir / row["path"]).resolve()): row.get("real_origin") or ""
                  for row in csv.DictReader(handle)}
    rows = [{"path": str(Path(path).resolve()), "label": int(label), "generator": generator or ""}
            for path, label, generator in zip(dataset["path"], dataset["label"], dataset["generator"])]
    for row in rows:
        row["source"] = origin.get(row["path"], "") or row["generator"]
    chosen = list(range(len(rows)))
    if max_per_class:
        chosen = [index for label in (0, 1)
                  for index in sorted((i for i in chosen if rows[i]["label"] == label),
                                      key=lambda i: rows[i]["path"])[:max_per_class]]
    # Near-duplicates (difference hash within a few bits) stay on one side of the split.
    groups = group_keys(dataset.select(chosen), "dhash")
    strata = [(rows[i]["label"], rows[i]["source"]) for i in chosen]
    train_index, heldout_index = split_indices(strata, HELDOUT_FRACTION, seed, groups=groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, indices in (("train", train_index), ("heldout", heldout_index)):
        with open(out_dir / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "generator", "source"],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[chosen[i]] for i in indices)
    counts = {name: {"images": len(indices), "fake": sum(rows[chosen[i]]["label"] for i in indices)}
              for name, indices in (("train", train_index), ("heldout", heldout_index))}
    return {"manifest": str(manifest.resolve()), "seed": seed, "heldout_fraction": HELDOUT_FRACTION, "counts": counts,
            "near_duplicate_images_grouped": len(groups) - len(set(groups))}


# ------------------------------------------------------------------------------------------------------- training

def variant_name(kind: str, policy: str, stage: str) -> str:
    return f"{kind}-{'deg' if policy != 'none' else 'clean'}-{stage}"


def train_run(config: dict, echo) -> Path:
    """One recipe run; a finished run is reused, an interrupted one resumed."""
    from fdcore.recipes.two_stage import training_function

    output_dir = Path(config["output_dir"])
    if (output_dir / "expert" / "manifest.json").is_file():
        echo(f"  {output_dir.name}: already trained, reused")
        return output_dir / "expert"
    if (output_dir / "run.json").is_file():
        echo(f"  {output_dir.name}: resuming the interrupted run")
        config = {**config, "resume": True}
    started = time.time()
    result = training_function(config)
    echo(f"  {output_dir.name}: trained in {time.time() - started:.0f} s")
    return result


def train_all(out: Path, size: ReproductionSize, seed: int, echo) -> dict[str, Path]:
    """Every variant's trained expert directory, by variant name."""
    from fdcore.recipes.two_stage import DEFAULTS

    experts = architectures()
    if not experts:
        raise ReproductionError("no transformer expert is installed: pip install -e experts/clip -e experts/siglip")
    trained: dict[str, Path] = {}
    for kind_index, (kind, expert_class) in enumerate(experts):
        config_path = out / "runs" / f"{kind}_backbone.json"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        architecture = expert_class.small_architecture(size.hidden, size.layers, size.heads, size.patch_size,
                                                       size.image_size)
        config_path.write_text(json.dumps(architecture, indent=2) + "\n")
        for policy in ("none", "featdistill"):
            base = {**DEFAULTS, "expert": kind, "init": "random", "backbone_config": str(config_path),
                    "expert_options": {"resize": "crop"}, "data": [str(out / "data" / "train.csv")],
                    # no validation split inside training: every held-out image is kept for the final table
                    "validation": None, "validation_fraction": 0.0, "policy": policy,
                    "validation_policy": "none", "epochs": size.stage1_epochs,
                    "stage2_epochs": size.stage2_epochs, "batch_size": size.batch_size, "lr": size.lr,
                    "warmup_fraction": 0.1, "seed": seed + 10 * kind_index, "workers": 2, "log_every": 10,
                    "mixed_precision": "no"}
            stage1_dir = out / "runs" / variant_name(kind, policy, "stage1")
            trained[stage1_dir.name] = train_run({**base, "stage": "1", "output_dir": str(stage1_dir)}, echo)
            for distiller in ("dense-l2", "crd"):
                run_dir = out / "runs" / variant_name(kind, policy, distiller)
                if not (run_dir / "stage1" / "done.json").is_file():
                    # Stage 2 starts from this configuration's own stage-1 model, shared by both distillers.
                    shutil.rmtree(run_dir / "stage1", ignore_errors=True)
                    shutil.copytree(stage1_dir / "stage1" / "expert", run_dir / "stage1" / "expert")
                    shutil.copy2(stage1_dir / "stage1" / "done.json", run_dir / "stage1" / "done.json")
                trained[run_dir.name] = train_run({**base, "stage": "2", "distiller": distiller,
                                                   "output_dir": str(run_dir)}, echo)
    trained.update(train_npr(out, size, seed, echo))
    return trained


def train_npr(out: Path, size: ReproductionSize, seed: int, echo) -> dict[str, Path]:
    """The NPR variants, trained from scratch with the recipe (NPR's own defaults: AdamW without weight decay, no
    degradations unless the variant names a policy); empty when fdcore-npr is not installed."""
    from fdcore import registry
    from fdcore.recipes.two_stage import DEFAULTS

    if "npr" not in registry.names("experts"):
        echo("fdcore-npr is not installed: the NPR rows are left out")
        return {}
    npr_class = registry.get("experts", "npr")
    trained = {}
    for name, policy, seed_offset in NPR_VARIANTS:
        config = {**DEFAULTS, **npr_class.training_defaults, "expert": "npr", "expert_options": dict(size.npr),
                  "data": [str(out / "data" / "train.csv")], "validation": None, "validation_fraction": 0.0,
                  "policy": policy, "validation_policy": "none", "epochs": size.npr_epochs, "stage": "1",
                  "batch_size": size.batch_size, "lr": size.npr_lr, "seed": seed + 100 + seed_offset, "workers": 2,
                  "log_every": 10, "mixed_precision": "no", "output_dir": str(out / "runs" / name)}
        trained[name] = train_run(config, echo)
    return trained


# ----------------------------------------------------------------------------------------------------- evaluation

def assemble(directory: Path, members: dict[str, Path], aggregator: str, card: dict) -> Path:
    from fdcore.ensemble_io import write_ensemble

    shutil.rmtree(directory, ignore_errors=True)
    entries = []
    for name, source in members.items():
        shutil.copytree(source, directory / name)
        entries.append({"name": name, "path": name, "weight": 1.0})
    write_ensemble(directory, entries, aggregator=aggregator, card=card)
    return directory


def headline(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("clean_roc_auc", "clean_roc_auc_ci", "robust_roc_auc",
                                              "robust_roc_auc_ci")}


def fused_metrics(records: list[dict], members: list[str], aggregator_name: str, bootstrap: int, seed: int) -> dict:
    import numpy as np

    import fdcore
    from fdcore.metrics import compute_metrics

    aggregator = fdcore.get_aggregator(aggregator_name)
    probabilities = np.array([[record[f"expert:{name}"] for record in records] for name in members],
                             dtype=np.float64)
    weights = np.full(len(members), 1.0 / len(members)) if aggregator.uses_weights else None
    fused = aggregator(probabilities, weights)
    keep = {key for key in records[0] if not key.startswith("expert:")}
    table = [{**{key: record[key] for key in keep}, "score": float(score), "raw_score": float(score)}
             for record, score in zip(records, fused)]
    return headline(compute_metrics(table, bootstrap=bootstrap, seed=seed))


def evaluate_all(out: Path, trained: dict[str, Path], size: ReproductionSize, seed: int, echo) -> dict:
    from fdcore import registry
    from fdcore.ensemble_io import load_ensemble
    from fdcore.evaluation import VariantPlan, load_rows, score_dataset, write_records_csv
    from fdcore.metrics import compute_metrics

    everything = assemble(out / "all-variants", trained, "mean", {"made_by": "recipes/reproduce.py"})
    ensemble = load_ensemble(everything, device="cpu")
    _, rows = load_rows([str(out / "data" / "heldout.csv")], seed=seed)
    plan = VariantPlan(suite=SUITE, copies=size.copies, seed=seed)
    echo(f"scoring {len(rows)} held-out images, clean and {size.copies} {SUITE} copies each, with "
         f"{len(trained)} variants")
    records, skipped = score_dataset(ensemble, rows, plan, batch_size=32, workers=2, use_calibration=False)
    if skipped:
        raise ReproductionError(f"{len(skipped)} held-out images could not be scored, e.g. {skipped[:3]}")
    write_records_csv(records, out / "records.csv")
    per_variant = compute_metrics(records, bootstrap=size.bootstrap, seed=seed)["experts"]
    kinds = [kind for kind, _ in architectures()]
    results = {"variants": {}, "ensembles": {}, "aggregators": {}}
    for policy in ("none", "featdistill"):
        for stage in ("stage1", "dense-l2", "crd"):
            for kind in kinds:
                name = variant_name(kind, policy, stage)
                results["variants"][name] = {"model": kind, "policy": policy, "stage2": stage,
                                             **headline(per_variant[name])}
            members = [variant_name(kind, policy, stage) for kind in kinds]
            results["ensembles"][variant_name("ensemble", policy, stage)] = {
                "model": f"ensemble ({' + '.join(kinds)}, mean)", "policy": policy, "stage2": stage,
                **fused_metrics(records, members, "mean", size.bootstrap, seed)}
    main_members = [variant_name(kind, MAIN_POLICY, MAIN_DISTILLER) for kind in kinds]
    for aggregator in registry.names("aggregators"):
        results["aggregators"][aggregator] = fused_metrics(records, main_members, aggregator, size.bootstrap, seed)
    assemble(out / "ensemble", {name: trained[name] for name in main_members}, "mean",
             {"made_by": "recipes/reproduce.py", "configuration": f"{MAIN_POLICY} + {MAIN_DISTILLER}"})
    npr_names = [name for name, _, _ in NPR_VARIANTS if name in trained]
    if npr_names:
        results.update(npr_results(records, npr_names, main_members, size, seed))
    results["evaluation"] = {"images": len(rows), "plan": plan.to_dict(), "records": len(records)}
    return results


def suite_groups() -> dict[str, str]:
    """Operator -> its group in the evaluation suite (blur, noise, color, geometric, compression)."""
    from fdcore import registry

    spec = registry.get("policies", SUITE)
    spec = spec() if callable(spec) else spec
    return {operator: group for branch in spec["branches"] for group, operators in branch["groups"].items()
            for operator in operators}


def group_metrics(records: list[dict], column: str, bootstrap: int, seed: int) -> dict:
    """Robust ROC AUC of one score column over the degraded images whose chain holds an operator of each group."""
    from fdcore.metrics.scores import MetricError, bootstrap_roc_auc_ci, roc_auc

    groups = suite_groups()
    table = {}
    for group in sorted(set(groups.values())):
        chosen = [record for record in records if record["condition"] == "degraded"
                  and any(groups.get(op) == group for op in record["degradation"].split("+"))]
        labels = [record["label"] for record in chosen]
        scores = [record[column] for record in chosen]
        try:
            table[group] = {"n": len(chosen), "robust_roc_auc": roc_auc(labels, scores, what=group),
                            "robust_roc_auc_ci": bootstrap_roc_auc_ci(labels, scores, bootstrap, seed)}
        except MetricError:
            table[group] = {"n": len(chosen), "robust_roc_auc": None, "robust_roc_auc_ci": None}
    return table


def fused_column(records: list[dict], members: list[str], aggregator_name: str, weights=None) -> list[float]:
    import numpy as np

    import fdcore

    aggregator = fdcore.get_aggregator(aggregator_name)
    probabilities = np.array([[record[f"expert:{name}"] for record in records] for name in members],
                             dtype=np.float64)
    if weights is None and aggregator.uses_weights:
        weights = np.full(len(members), 1.0 / len(members))
    return [float(value) for value in aggregator(probabilities, weights)]


def cross_fitted_weights(records: list[dict], members: list[str], seed: int) -> tuple[list[float], list[dict]]:
    """Ensemble scores with weights chosen on the *other* half of the held-out images (two folds, split by image and
    class, seeded): the weights on a 0.1 grid of the simplex maximising the pooled ROC AUC (clean + degraded) of the
    fold they are fitted on. Returns every record's cross-fitted score and each fold's weights. No image is scored
    with weights that saw it."""
    import itertools

    import numpy as np

    from fdcore.metrics.scores import fast_roc_auc

    images = sorted({(record["label"], record["path"]) for record in records})
    rng = np.random.default_rng(seed)
    fold_of = {}
    for label in (0, 1):
        paths = [path for image_label, path in images if image_label == label]
        for position, index in enumerate(rng.permutation(len(paths))):
            fold_of[paths[index]] = position % 2
    steps = range(11)
    grid = [np.array(point) / 10 for point in itertools.product(steps, repeat=len(members)) if sum(point) == 10]
    probabilities = np.array([[record[f"expert:{name}"] for record in records] for name in members])
    labels = np.array([record["label"] for record in records])
    folds = np.array([fold_of[record["path"]] for record in records])
    scores, chosen = np.zeros(len(records)), []
    for fold in (0, 1):
        fit = folds != fold
        best = max(grid, key=lambda weights: (fast_roc_auc(labels[fit], weights @ probabilities[:, fit]),
                                              -float(np.abs(weights - 1 / len(members)).sum())))
        scores[~fit] = best @ probabilities[:, ~fit]
        chosen.append({"fold": fold, "weights": dict(zip(members, [round(float(w), 1) for w in best]))})
    return scores.tolist(), chosen


def npr_results(records: list[dict], npr_names: list[str], main_members: list[str], size: ReproductionSize,
                seed: int) -> dict:
    """NPR alone, NPR + CLIP + SigLIP under every fusion rule and cross-fitted weights, per-group robust AUC, and
    paired bootstrap differences (clustered by image) for the comparisons the docs draw."""
    from fdcore import registry
    from fdcore.metrics import compute_metrics
    from fdcore.metrics.scores import paired_bootstrap_auc_difference

    def with_score(values):
        return [{**record, "score": value, "raw_score": value} for record, value in zip(records, values)]

    def headline_of(values):
        return headline(compute_metrics(with_score(values), bootstrap=size.bootstrap, seed=seed))

    members = [MAIN_NPR if MAIN_NPR in npr_names else npr_names[0], *main_members]
    columns = {name: [record[f"expert:{name}"] for record in records] for name in npr_names}
    columns.update({name: [record[f"expert:{name}"] for record in records] for name in main_members})
    three = {}
    for aggregator in registry.names("aggregators"):
        columns[f"3-arch {aggregator}"] = fused_column(records, members, aggregator)
        three[aggregator] = headline_of(columns[f"3-arch {aggregator}"])
    columns["3-arch cross-fitted weights"], folds = cross_fitted_weights(records, members, seed)
    three["weighted, cross-fitted on held-out halves"] = {**headline_of(columns["3-arch cross-fitted weights"]),
                                                         "folds": folds}
    degraded = [index for index, record in enumerate(records) if record["condition"] == "degraded"]
    labels = [records[index]["label"] for index in degraded]
    images = [records[index]["path"] for index in degraded]

    def paired(first: str, second: str) -> dict:
        result = paired_bootstrap_auc_difference(labels, [columns[first][i] for i in degraded],
                                                 [columns[second][i] for i in degraded], groups=images,
                                                 replicates=max(size.bootstrap, 50), seed=seed)
        return {"a": first, "b": second, "metric": "robust ROC AUC", **result}

    comparisons = [("3-arch mean", members[0]), ("3-arch cross-fitted weights", members[0]),
                   ("3-arch max", members[0])]
    comparisons += [(name, MAIN_NPR) for name in npr_names if name != MAIN_NPR and MAIN_NPR in npr_names]
    group_rows = {name: group_metrics(with_score(columns[name]), "score", size.bootstrap, seed)
                  for name in [*npr_names, *main_members, "3-arch mean", "3-arch cross-fitted weights"]}
    return {"npr": {name: {"model": "npr", "policy": policy, "seed_offset": offset,
                           **headline_of(columns[name])}
                    for name, policy, offset in NPR_VARIANTS if name in npr_names},
            "three_architectures": {"members": members, "aggregators": three},
            "groups": group_rows,
            "paired": [paired(first, second) for first, second in comparisons]}


# ---------------------------------------------------------------------------------------------------------- report

def _cell(value, interval) -> str:
    if value is None:
        return "n/a"
    if interval:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def results_markdown(results: dict) -> str:
    lines = ["| model | degradation training | stage 2 | clean ROC AUC [95% CI] | robust ROC AUC [95% CI] |",
             "|---|---|---|---|---|"]
    stage_label = {"stage1": "none (stage 1 only)", "dense-l2": "+ dense-l2", "crd": "+ CRD"}
    rows = [*results["variants"].items(), *results["ensembles"].items()]
    for _, metrics in rows:
        lines.append(f"| {metrics['model']} | {metrics['policy']} | {stage_label[metrics['stage2']]} | "
                     f"{_cell(metrics['clean_roc_auc'], metrics['clean_roc_auc_ci'])} | "
                     f"{_cell(metrics['robust_roc_auc'], metrics['robust_roc_auc_ci'])} |")
    lines += ["", f"Ensemble of the {MAIN_POLICY} + {MAIN_DISTILLER} experts under each aggregator:", "",
              "| aggregator | clean ROC AUC [95% CI] | robust ROC AUC [95% CI] |", "|---|---|---|"]
    for name, metrics in results["aggregators"].items():
        lines.append(f"| {name} | {_cell(metrics['clean_roc_auc'], metrics['clean_roc_auc_ci'])} | "
                     f"{_cell(metrics['robust_roc_auc'], metrics['robust_roc_auc_ci'])} |")
    if results.get("npr"):
        lines += ["", "NPR (trained from scratch, stage 1, native-resolution windows):", "",
                  "| variant | degradation training | clean ROC AUC [95% CI] | robust ROC AUC [95% CI] |",
                  "|---|---|---|---|"]
        for name, metrics in results["npr"].items():
            lines.append(f"| {name} | {metrics['policy']} | "
                         f"{_cell(metrics['clean_roc_auc'], metrics['clean_roc_auc_ci'])} | "
                         f"{_cell(metrics['robust_roc_auc'], metrics['robust_roc_auc_ci'])} |")
        three = results["three_architectures"]
        lines += ["", f"Three architectures ({' + '.join(three['members'])}) under each fusion rule:", "",
                  "| fusion | clean ROC AUC [95% CI] | robust ROC AUC [95% CI] |", "|---|---|---|"]
        for name, metrics in three["aggregators"].items():
            lines.append(f"| {name} | {_cell(metrics['clean_roc_auc'], metrics['clean_roc_auc_ci'])} | "
                         f"{_cell(metrics['robust_roc_auc'], metrics['robust_roc_auc_ci'])} |")
        groups = sorted({group for table in results["groups"].values() for group in table})
        lines += ["", "Robust ROC AUC by degradation group (degraded images whose chain holds an operator of the "
                  "group; n per group in results.json):", "",
                  "| model | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for name, table in results["groups"].items():
            cells = [f"{table[g]['robust_roc_auc']:.3f}" if table[g]["robust_roc_auc"] is not None else "n/a"
                     for g in groups]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Paired bootstrap differences of robust ROC AUC (resampling whole images):", "",
                  "| a | b | a - b [95% CI] | share of replicates with a <= b |", "|---|---|---|---|"]
        for row in results["paired"]:
            lines.append(f"| {row['a']} | {row['b']} | {row['difference']:+.3f} [{row['ci'][0]:+.3f}, "
                         f"{row['ci'][1]:+.3f}] | {row['p_a_not_better']:.3f} |")
    return "\n".join(lines) + "\n"


def run_reproduction(data_dir: Path, out: Path, size_name: str = "full", seed: int = 0, echo=print) -> dict:
    from fdcore.fileio import write_json_atomic
    from fdcore.training import environment_record

    if size_name not in SIZES:
        raise ReproductionError(f"unknown --size {size_name!r}; choose one of {sorted(SIZES)}")
    size = SIZES[size_name]
    data_dir, out = Path(data_dir), Path(out)
    started = time.time()
    split_record = out / "data" / "split.json"
    if split_record.is_file():
        split = json.loads(split_record.read_text())
        if split["manifest"] != str((data_dir / "manifest.csv").resolve()) or split.get("size") != size_name:
            raise ReproductionError(f"{out} holds a reproduction of {split['manifest']} at size {split.get('size')}; "
                                    "use another --out")
    else:
        split = {**split_manifest(data_dir, out / "data", seed, size.max_per_class), "size": size_name}
        write_json_atomic(split_record, split)
    echo(f"split: {split['counts']} ({split['near_duplicate_images_grouped']} near-duplicate images kept together)")
    trained = train_all(out, size, seed, echo)
    training_seconds = time.time() - started
    results = evaluate_all(out, trained, size, seed, echo)
    results.update({"split": split, "size": dataclasses.asdict(size), "size_name": size_name, "seed": seed,
                    "seconds": {"training": round(training_seconds, 1), "total": round(time.time() - started, 1)},
                    "command": " ".join(sys.argv), **environment_record()})
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with real/, fake/ and manifest.csv (aigc-sd1x)")
    parser.add_argument("--out", required=True, help="output folder (reused to resume)")
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        results = run_reproduction(Path(args.data), Path(args.out), args.size, args.seed)
    except FdcoreError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(results_markdown(results))
    print(f"results: {Path(args.out) / 'results.md'} and results.json")


if __name__ == "__main__":
    main()
