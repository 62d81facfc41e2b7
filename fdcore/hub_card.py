"""The model card (README.md) of an ensemble pushed to the Hugging Face Hub: the Hub's YAML metadata header, then what
the ensemble is, each expert's training data (from its recorded provenance), its calibration, the metrics of an
``fdcore evaluate`` run on this very ensemble, intended use, limitations and licence.

The card is written from the staged, verified ensemble and is not part of its identity (docs/hub.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRAINING_KEYS = ("recipe", "init", "epochs", "stage2_epochs", "stage", "batch_size", "lr", "stage2_lr", "policy",
                  "distiller", "distill_weight", "seed")
NOT_CALIBRATED = ("Not calibrated: scores are the fused experts' raw probabilities, and no decision threshold is stored "
                  "(`fdcore calibrate` fits both on validation data).")
NOT_EVALUATED = ("No evaluation was attached when this card was written (`fdcore evaluate`, then `fdcore ensemble push "
                 "... --evaluation REPORT_DIR`). Measure it on data like yours before relying on it.")
INTENDED_USE = ("Screening images for signs of AI generation, as one signal among others, and research on robust "
                "detection. The score is about the image as a whole; it does not say which regions were generated or "
                "by which generator.")
LIMITATIONS = (
    ("A detector learns the generators, content and processing of its training data. Images from generators it has "
     "not seen, heavy editing, re-compression, resizing, screenshots or photographs of screens can be scored wrongly "
     "in either direction."),
    ("A score is not proof. Do not use it as the sole basis for decisions about people (accusations of fraud or "
     "misconduct, moderation without human review)."),
    ("The calibration and the threshold hold for data like the validation data they were fitted on, and the metrics "
     "above for the evaluation data only: measure on your own data (`fdcore evaluate`)."),
    ("The training and evaluation records in this card are what fdcore recorded when the experts were trained and "
     "evaluated (local paths included); they were not checked again."),
)


def _cell(value: Any) -> str:
    """A value as Markdown table text: no line breaks, no column separators."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.{digits}f}"


def _interval(value: Any, ci: Any) -> str:
    text = _number(value)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        text += f" ({_number(ci[0])}–{_number(ci[1])})"
    return text


def _provider(expert_name: str) -> str | None:
    from fdcore import registry
    from fdcore.errors import FdcoreError

    try:
        return registry.entry("experts", expert_name).provider
    except FdcoreError:
        return None


def base_model(config: dict) -> str | None:
    """The Hub id of the pretrained backbone an expert started from, when its card says so (None when trained from
    scratch, from a local folder, or not recorded)."""
    from fdcore import registry
    from fdcore.errors import FdcoreError

    card = config.get("card") or {}
    hyperparameters = card.get("hyperparameters") or {}
    imported = (card.get("source") or {}).get("format") == "featdistill-release"
    if not imported and (not hyperparameters or hyperparameters.get("init", "pretrained") != "pretrained"):
        return None
    backbone = hyperparameters.get("backbone")
    if not backbone:
        try:
            backbone = getattr(registry.get("experts", config.get("expert")), "default_backbone", None)
        except FdcoreError:
            backbone = None
    return backbone if isinstance(backbone, str) and _HUB_ID.match(backbone) and not Path(backbone).exists() \
        else None


def _sources(spec: Any) -> list[dict]:
    return [source for source in (spec or {}).get("sources") or [] if isinstance(source, dict)]


def hub_datasets(config: dict) -> list[str]:
    """Hub dataset ids an expert was trained on (``hub:`` sources of its recorded data spec)."""
    data = (config.get("card") or {}).get("data") or {}
    return [str(source["location"]) for source in _sources(data.get("spec"))
            if source.get("kind") == "hub" and source.get("location")]


def _metadata(ensemble, configs: dict[str, dict], repo_id: str, license: str, evaluation: dict | None) -> dict:
    kinds = list(dict.fromkeys(member.expert.name for member in ensemble.members))
    metadata: dict[str, Any] = {
        "library_name": "fdcore",
        "license": license,
        "pipeline_tag": "image-classification",
        "tags": list(dict.fromkeys(["fdcore", "ai-generated-image-detection", "image-forensics", "ensemble",
                                    *kinds])),
    }
    bases = sorted({model for config in configs.values() if (model := base_model(config))})
    if bases:
        metadata["base_model"] = bases
    datasets = sorted({dataset for config in configs.values() for dataset in hub_datasets(config)})
    if datasets:
        metadata["datasets"] = datasets
    if evaluation is not None:
        results = []
        for key, name in (("clean_roc_auc", "clean ROC AUC"), ("robust_roc_auc", "robust ROC AUC")):
            if isinstance(evaluation.get(key), (int, float)):
                results.append({"type": "roc_auc", "value": round(float(evaluation[key]), 4), "name": name})
        clean = (evaluation.get("fused") or {}).get("clean") or {}
        for key, kind, name in (("average_precision", "average_precision", "average precision (clean)"),
                                ("tpr_at_fpr_1pct", "tpr_at_fpr_1pct", "TPR at 1% FPR (clean)"),
                                ("ece", "ece", "expected calibration error (clean)")):
            if isinstance(clean.get(key), (int, float)):
                results.append({"type": kind, "value": round(float(clean[key]), 4), "name": name})
        if results:
            sources = _sources(((evaluation.get("evaluation") or {}).get("data") or {}).get("spec"))
            hub = [s["location"] for s in sources if s.get("kind") == "hub" and s.get("location")]
            dataset = {"name": ", ".join(str(s.get("name")) for s in sources) or "evaluation data",
                       "type": hub[0] if len(hub) == 1 and len(sources) == 1 else "custom"}
            metadata["model-index"] = [{"name": repo_id.split("/", 1)[1], "results": [{
                "task": {"type": "image-classification", "name": "AI-generated image detection"},
                "dataset": dataset, "metrics": results}]}]
    return metadata


def _data_lines(data: dict) -> list[str]:
    sources = _sources(data.get("spec"))
    if not sources:
        return []
    counts = ((data.get("counts") or (data.get("spec") or {}).get("counts") or {}).get("sources")) or {}
    lines = ["| source | kind | location | weight | rows (real / AI-generated) |", "|---|---|---|---|---|"]
    for source in sources:
        count = counts.get(source.get("name")) or {}
        rows = (f"{count.get('rows')} ({count.get('real', '?')} / {count.get('fake', '?')})" if "rows" in count
                else "not recorded")
        where = source.get("uri") or source.get("location") or ""
        lines.append(f"| {_cell(source.get('name'))} | {_cell(source.get('kind'))} | `{_cell(where)}` | "
                     f"{_cell(source.get('weight', 1))} | {_cell(rows)} |")
    validation = (data.get("spec") or {}).get("validation")
    if isinstance(validation, dict) and validation.get("fraction"):
        lines.append(f"\nValidation: {validation['fraction']:g} of each source held out.")
    elif isinstance(validation, dict) and validation.get("data"):
        names = ", ".join(str(s.get("name")) for s in _sources(validation["data"]))
        lines.append(f"\nValidation: separate sources ({_cell(names)}).")
    return lines


def _expert_section(member, config: dict) -> list[str]:
    card = config.get("card") or {}
    lines = [f"### {member.name}", ""]
    source = card.get("source") or {}
    if source.get("format") == "featdistill-release":
        lines.append(f"Converted from the FeatDistill release file `{_cell(source.get('file'))}` (SHA-256 "
                     f"`{_cell(source.get('sha256'))}`); its training data is that of the FeatDistill paper "
                     "(arXiv:2603.21939), not recorded in the file.")
    data_lines = _data_lines(card.get("data") or {})
    if data_lines:
        lines += ["Training data (as recorded when it was trained):", "", *data_lines]
    elif source.get("format") != "featdistill-release":
        lines.append("Training data: not recorded in this expert's card.")
    hyperparameters = card.get("hyperparameters") or {}
    settings = {key: hyperparameters[key] for key in _TRAINING_KEYS if hyperparameters.get(key) is not None}
    if card.get("recipe"):
        settings = {"recipe": card["recipe"], **settings}
    if settings:
        lines += ["", "Training: " + ", ".join(f"{key} `{_cell(value)}`" for key, value in settings.items()) + "."]
    metrics = card.get("metrics") or {}
    measured = [f"{stage} {key} {_number(value)}" for stage, values in metrics.items() if isinstance(values, dict)
                for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if measured:
        lines += ["", f"Validation during training: {', '.join(measured[:12])}."]
    return lines + [""]


def _calibration_lines(ensemble) -> list[str]:
    calibrator = ensemble.calibrator
    if calibrator is None:
        return [NOT_CALIBRATED]
    fitted = calibrator.fitted_on or {}
    lines = [(f"Calibrated with {calibrator.method} scaling on {fitted.get('n', '?')} validation scores "
              f"({fitted.get('n_real', '?')} real, {fitted.get('n_fake', '?')} AI-generated; fusion rule "
              f"`{_cell(fitted.get('aggregator', ensemble.aggregator))}`): expected calibration error "
              f"{_number(fitted.get('ece_before'))} before, {_number(fitted.get('ece_after'))} after.")]
    try:
        spec = json.loads(fitted["data"]) if isinstance(fitted.get("data"), str) else None
    except ValueError:
        spec = None
    names = ", ".join(f"{s.get('name')} ({s.get('kind')})" for s in _sources(spec))
    if names:
        lines.append(f"Validation data: {_cell(names)}.")
    threshold = calibrator.threshold
    if threshold:
        lines.append(f"Decision threshold {_number(threshold.get('value'))} on the calibrated score (at or above: "
                     f"AI-generated), chosen for a validation false-positive rate of at most "
                     f"{threshold.get('target_fpr')}: validation FPR {_number(threshold.get('validation_fpr'))}, "
                     f"TPR {_number(threshold.get('validation_tpr'))}.")
        band = threshold.get("inconclusive")
        if band:
            lines.append(f"Scores in [{band[0]:g}, {band[1]:g}) are reported as inconclusive.")
    return [" ".join(lines)]


def _evaluation_lines(evaluation: dict | None) -> list[str]:
    if evaluation is None:
        return [NOT_EVALUATED]
    record = evaluation.get("evaluation") or {}
    variants = record.get("variants") or {}
    fused = evaluation.get("fused") or {}
    sources = _sources((record.get("data") or {}).get("spec"))
    described = ", ".join(f"{s.get('name')} ({s.get('kind')})" for s in sources) or "not recorded"
    suite = variants.get("suite")
    degradations = (f"degraded copies: {variants.get('copies')} per image from the `{_cell(suite)}` suite" if suite
                    else "clean images only")
    scores = "calibrated scores" if record.get("calibrated") else "raw (uncalibrated) scores"
    clean_auc = _interval(evaluation.get("clean_roc_auc"), evaluation.get("clean_roc_auc_ci"))
    robust_auc = _interval(evaluation.get("robust_roc_auc"), evaluation.get("robust_roc_auc_ci"))
    lines = [(f"Measured with `fdcore evaluate` (fdcore {record.get('fdcore', '?')}) on {record.get('images', '?')} "
              f"images: {_cell(described)}; {degradations}; {scores}."), "",
             "| metric | clean | degraded |", "|---|---|---|",
             f"| ROC AUC (95% CI) | {clean_auc} | {robust_auc} |"]
    degraded = fused.get("degraded") or {}
    clean = fused.get("clean") or {}
    for key, name in (("average_precision", "average precision"), ("accuracy", "accuracy"),
                      ("balanced_accuracy", "balanced accuracy"), ("tpr_at_fpr_1pct", "TPR at 1% FPR"),
                      ("tpr_at_fpr_5pct", "TPR at 5% FPR"), ("eer", "equal error rate"),
                      ("ece", "expected calibration error"), ("brier", "Brier score")):
        if key in clean or key in degraded:
            lines.append(f"| {name} | {_number(clean.get(key))} | {_number(degraded.get(key))} |")
    experts = evaluation.get("experts") or {}
    if experts:
        lines += ["", "Per expert (ROC AUC): " + "; ".join(
            f"{name} clean {_number(values.get('clean_roc_auc'))}, degraded {_number(values.get('robust_roc_auc'))}"
            for name, values in experts.items() if isinstance(values, dict)) + "."]
    return lines


def model_card(ensemble, directory, repo_id: str, license: str | None = None, evaluation: dict | None = None) -> str:
    """README.md for the Hub: YAML metadata header and Markdown body, for the loaded ``ensemble`` of ``directory``.

    Args:
        ensemble: the :class:`fdcore.Ensemble` loaded from ``directory``.
        repo_id: ``ORG/NAME``.
        license: licence identifier (default: ``license`` of the ensemble card, else apache-2.0).
        evaluation: ``metrics.json`` of ``fdcore evaluate`` on this ensemble (already checked to match it).
    """
    import yaml

    from fdcore import __version__
    from fdcore.ensemble_io import read_ensemble_json
    from fdcore.expert_io import read_expert_config
    from fdcore.hub import DEFAULT_LICENSE, HUB_MANIFEST

    document = read_ensemble_json(directory)
    license = license or (document.get("card") or {}).get("license") or DEFAULT_LICENSE
    configs = {member.name: read_expert_config(Path(member.source)) for member in ensemble.members}
    metadata = _metadata(ensemble, configs, repo_id, license, evaluation)
    providers = sorted({provider for member in ensemble.members if (provider := _provider(member.expert.name))})
    names = ", ".join(f"`{member.name}`" for member in ensemble.members)
    calibrated = f", then {ensemble.calibrator.method} calibration" if ensemble.calibrator is not None else ""
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {repo_id}", "",
        (f"An fdcore ensemble that scores images for signs of AI generation: {len(ensemble.members)} "
         f"expert{'s' if len(ensemble.members) != 1 else ''} ({names}) whose probabilities are fused by the "
         f"`{ensemble.aggregator}` rule{calibrated}. Each image gets P(AI-generated) (label 1 = AI-generated)."), "",
        f"- ensemble identity: `{ensemble.identity}` (fdcore records it with every score it writes)",
        f"- pushed with fdcore {__version__}; plugins: "
        + (", ".join(f"`{provider}`" for provider in providers) or "none"), "",
        "## Use", "",
        "```bash",
        f"fdcore predict IMAGES --ensemble hf://{repo_id} --out predictions",
        f"fdcore ensemble pull {repo_id}        # fetch once; then HF_HUB_OFFLINE=1 works from the cache",
        "```", "",
        "```python",
        "import fdcore",
        f'ensemble = fdcore.load_ensemble("hf://{repo_id}")',
        'results = ensemble.predict_paths(["a.jpg", "b.png"])',
        "```", "",
        (f"Pin a commit (`hf://{repo_id}@COMMIT`) for results that cannot change. fdcore checks every file against "
         f"`{HUB_MANIFEST}` (size and SHA-256) before loading, refuses files it does not list, and never runs code "
         "from this repository: weights are safetensors, everything else JSON, and each expert is built by its "
         "installed plugin."), "",
        "## Experts", "",
        "| member | expert | plugin | parameters | input | weight | base model |",
        "|---|---|---|---|---|---|---|",
    ]
    for member in ensemble.members:
        pre = member.expert.preprocessing
        geometry = f"{pre.size} px, {pre.resize}" + (f", {pre.crops} windows" if pre.resize == "native" else "")
        parameters = sum(parameter.numel() for parameter in member.expert.parameters())
        lines.append(f"| {_cell(member.name)} | {_cell(member.expert.name)} | "
                     f"{_cell(_provider(member.expert.name) or 'unknown')} | {parameters:,} | {_cell(geometry)} | "
                     f"{member.weight:g} | {_cell(base_model(configs[member.name]) or 'none recorded')} |")
    lines += ["", "## Training data", ""]
    for member in ensemble.members:
        lines += _expert_section(member, configs[member.name])
    calibration = f", `{document['calibration']}`" if document.get("calibration") else ""
    lines += ["## Calibration", "", *_calibration_lines(ensemble), "",
              "## Evaluation", "", *_evaluation_lines(evaluation), "",
              "## Intended use", "", INTENDED_USE, "",
              "## Limitations", "", *(f"- {item}" for item in LIMITATIONS), "",
              "## Files", "",
              (f"`ensemble.json` (members, weights, fusion rule), one folder per expert (`expert.json`, "
               f"`model.safetensors`, `manifest.json`){calibration} and `{HUB_MANIFEST}` (size and SHA-256 of each "
               "of them, and the ensemble identity). This card is not part of the ensemble: editing it changes "
               "nothing fdcore loads."), "",
              "## Licence", "",
              (f"`{license}` for the files of this repository. The training data and any pretrained backbone keep "
               "their own licences."), ""]
    return "\n".join(lines)
