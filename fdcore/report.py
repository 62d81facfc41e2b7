"""The evaluation report: ``metrics.json``, ``report.md``, a self-contained ``report.html`` and the PNG plots.

The report explains itself: what was evaluated (ensemble, data, suite, seed, versions), the headline with a plain
reading, the plots, a glossary of every metric it shows, breakdown tables limited to rows with enough images (the rest
pooled or summarised), per-expert agreement and the settings, in that order; ``report.md`` mirrors ``report.html``.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), imported only when a report
is written. Every user-supplied string (generator, source, degradation names, title) is escaped in HTML and Markdown.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.fileio import write_bytes_atomic
from fdcore.metrics.records import CLEAN, DEGRADED, RecordTable, normalize_records
from fdcore.metrics.scores import binary_metrics, reliability_bins, roc_curve

ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability.png"
HISTOGRAMS_PNG = "score_histograms.png"
HEATMAP_PNG = "robustness_heatmap.png"
SEVERITY_PNG = "severity_curves.png"
PLOT_FILES = (ROC_PNG, RELIABILITY_PNG, HISTOGRAMS_PNG, HEATMAP_PNG, SEVERITY_PNG)
# Most panels in the histogram figure and rows in the heat map.
MAX_GROUPS = 24
# Most generator columns in the heat map (the generators with the most images are kept).
MAX_GENERATORS = 10
# Breakdown rows with fewer images than this are pooled or summarised, never listed: a 1-image row shows 0 or 1.
MIN_GROUP_IMAGES = 20
FUSED_LABEL = "ensemble (fused)"
# Plots whose cells carry numbers: the HTML shows them at their own size (scrolling sideways on a narrow screen).
NATIVE_SIZE_PLOTS = (HEATMAP_PNG,)


class ReportError(FdcoreError):
    """A report that cannot be written (bad metrics dict or unwritable folder)."""


# -- the document model: sections of blocks, rendered to HTML and Markdown -------------------------------------------

@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    kind: str = "data"  # "data" (numbers right-aligned), "text" (left-aligned) or "kv" (key/value, no header)


@dataclasses.dataclass
class Figure:
    filename: str
    caption: str
    data: bytes


@dataclasses.dataclass
class Card:
    """One headline number: a label, the value with its interval, and plain-language lines under it."""

    label: str
    value: str
    lines: list[str]


@dataclasses.dataclass
class Subheading:
    text: str


@dataclasses.dataclass
class Definitions:
    items: list[tuple[str, str]]


@dataclasses.dataclass
class Section:
    key: str  # the HTML id; tests and links rely on it
    heading: str
    blocks: list[Any]


# -- numbers ----------------------------------------------------------------------------------------------------------

def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(value: Any, interval: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _share(count: int, total: int) -> str:
    return f"{count / total:.1%} ({count} of {total})" if total else "n/a (0 images)"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _short(identity: Any) -> str:
    return f"{identity[:12]}…" if isinstance(identity, str) and len(identity) > 12 else str(identity)


def _n(cell: dict[str, Any]) -> int:
    return int(cell.get("n_real") or 0) + int(cell.get("n_fake") or 0)


def reading_of_auc(value: float | None, interval: Any = None) -> str:
    """One plain-language line for a ROC AUC (0.5 = chance, 1.0 = perfect)."""
    if value is None:
        return "Not measured: it needs both real and AI-generated images."
    if interval and interval[0] <= 0.5 <= interval[1]:
        verdict = "not distinguishable from chance on this data (the 95% interval contains 0.5)"
    elif value < 0.5:
        verdict = "worse than chance: real images tend to score higher than AI-generated ones"
    elif value >= 0.99:
        verdict = "near-perfect separation"
    elif value >= 0.9:
        verdict = "strong separation"
    elif value >= 0.8:
        verdict = "good separation"
    elif value >= 0.7:
        verdict = "moderate separation"
    elif value >= 0.6:
        verdict = "weak separation"
    else:
        verdict = "barely better than chance"
    return f"In {value:.0%} of (AI-generated, real) pairs the AI-generated image scores higher: {verdict}."


# -- plots ------------------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the PNG bytes then depend only on the data and matplotlib's rendering.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _scorers(table: RecordTable) -> list[tuple[str, str | None]]:
    return [(FUSED_LABEL, None)] + [(name, name) for name in sorted(table.experts)]


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and labels.min() != labels.max()


def plot_roc_curves(table: RecordTable) -> bytes:
    """Clean and robust ROC curves side by side, the fused score and every expert in each panel."""
    figure = _figure(11, 5)
    for axes, (condition, mask) in zip(figure.subplots(1, 2), ((CLEAN, table.clean), (DEGRADED, table.degraded))):
        axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="chance (AUC 0.5)")
        real, fake = int((mask & (table.label == 0)).sum()), int((mask & (table.label == 1)).sum())
        axes.set_title(f"{'Clean' if condition == CLEAN else 'Robust (degraded, pooled)'}: "
                       f"{real} real, {fake} AI-generated")
        axes.set_xlabel("false-positive rate (real called AI-generated)")
        axes.set_ylabel("true-positive rate (AI-generated caught)")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.01)
        if not _has_both_classes(table.label[mask]):
            axes.text(0.5, 0.5, "needs real and AI-generated images", ha="center", va="center")
            continue
        for index, (label, scorer) in enumerate(_scorers(table)):
            fpr, tpr, _ = roc_curve(table.label[mask], table.scores_of(scorer)[mask])
            area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
            fused = scorer is None
            axes.plot(fpr, tpr, color="black" if fused else f"C{index % 10}", linewidth=2.2 if fused else 1.2,
                      label=f"{label} (AUC {area:.3f})")
        axes.legend(loc="lower right", fontsize=8)
    return _png_bytes(figure)


def plot_reliability(table: RecordTable, bins: int) -> bytes:
    """Reliability diagram of the fused P(AI-generated), clean and degraded, with bin counts underneath."""
    figure = _figure(11, 6)
    grid = figure.add_gridspec(2, 2, height_ratios=(3, 1))
    for column, (condition, mask) in enumerate(((CLEAN, table.clean), (DEGRADED, table.degraded))):
        curve_axes = figure.add_subplot(grid[0, column])
        count_axes = figure.add_subplot(grid[1, column], sharex=curve_axes)
        curve_axes.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect calibration")
        curve_axes.set_title(f"{condition}: fused score, {bins} equal-width bins, n={int(mask.sum())}")
        curve_axes.set_ylabel("fraction AI-generated")
        curve_axes.set_xlim(0, 1)
        curve_axes.set_ylim(0, 1)
        count_axes.set_xlabel("mean predicted P(AI-generated) in bin")
        count_axes.set_ylabel("images")
        if not mask.any():
            curve_axes.text(0.5, 0.5, "no images", ha="center", va="center")
            continue
        table_bins = reliability_bins(table.label[mask], table.score[mask], bins)
        centres = [(low + high) / 2 for low, high in zip(table_bins["edges"][:-1], table_bins["edges"][1:])]
        filled = [i for i, count in enumerate(table_bins["count"]) if count]
        curve_axes.plot([table_bins["mean_probability"][i] for i in filled],
                        [table_bins["fraction_fake"][i] for i in filled], marker="o", color="C3", label="observed")
        curve_axes.legend(loc="upper left", fontsize=8)
        count_axes.bar(centres, table_bins["count"], width=1.0 / bins, color="0.5", edgecolor="white")
    return _png_bytes(figure)


def robustness_view(metrics: dict[str, Any], min_images: int = MIN_GROUP_IMAGES) -> dict[str, Any] | None:
    """The degradation groups the heat map, the histograms and the matrix table show, chosen once.

    Rows are degradation chains when the chains with at least ``min_images`` images hold most degraded images and
    are few enough to read; otherwise operators (a chain counts for each of its operators). Smaller groups are left
    out and counted in ``dropped``. Returns ``kind``, ``rows`` (name, n real, [(ROC AUC, n AI) per generator]),
    ``generators``, ``dropped`` (groups, images), ``generators_dropped`` and ``few`` (cells with fewer AI-generated
    images are drawn pale); None without a generator matrix.
    """
    breakdown = metrics.get("breakdown", {})

    def columns(matrix):
        return [(index, name, matrix["n_real"][index] + sum(row[index] for row in matrix["n_fake"]))
                for index, name in enumerate(matrix["columns"])]

    chains = breakdown.get("generator_x_degradation")
    if not chains or not chains.get("rows"):
        return None
    kind, matrix = "degradation chain", chains
    chain_columns = [column for column in columns(chains) if column[1] != CLEAN]
    kept = [column for column in chain_columns if column[2] >= min_images]
    degraded_images = sum(column[2] for column in chain_columns)
    if chain_columns and (len(kept) > MAX_GROUPS or sum(column[2] for column in kept) < degraded_images / 2):
        operators = breakdown.get("generator_x_operator")
        if operators and operators.get("rows"):
            kind, matrix = "operator", operators
    all_columns = columns(matrix)
    shown = [column for column in all_columns if column[1] == CLEAN or column[2] >= min_images]
    dropped = [column for column in all_columns if column not in shown]
    if len(shown) > MAX_GROUPS:  # the largest groups; the rest counted as dropped
        ranked = sorted(shown, key=lambda column: (column[1] != CLEAN, -column[2], column[1]))
        dropped += ranked[MAX_GROUPS:]
        shown = [column for column in shown if column in ranked[:MAX_GROUPS]]
    generator_sizes = [(sum(row), position) for position, row in enumerate(matrix["n_fake"])]
    chosen = sorted(position for _, position in sorted(generator_sizes, key=lambda item: -item[0])[:MAX_GENERATORS])
    rows = [(name, matrix["n_real"][index],
             [(matrix["roc_auc"][position][index], matrix["n_fake"][position][index]) for position in chosen])
            for index, name, _ in shown]
    return {"kind": kind, "rows": rows, "generators": [matrix["rows"][position] for position in chosen],
            "dropped": (len(dropped), sum(column[2] for column in dropped)),
            "generators_dropped": len(matrix["rows"]) - len(chosen), "few": few_fakes(min_images)}


def few_fakes(min_images: int) -> int:
    """Heat-map cells with fewer AI-generated images than this are drawn pale."""
    return max(1, min_images // 2)


def _group_masks(table: RecordTable, view: dict[str, Any] | None) -> list[tuple[str, np.ndarray]]:
    """Masks of the view's degradation groups (clean only without a view)."""
    if view is None:
        return [(CLEAN, table.clean)] if table.clean.any() else []
    operators = table.operators() if view["kind"] == "operator" else None
    masks = []
    for name, _, _ in view["rows"]:
        if name == CLEAN:
            masks.append((name, table.clean))
        elif operators is not None:
            masks.append((f"contains {name}", table.degraded & np.array([name in chain for chain in operators])))
        else:
            masks.append((name, table.degraded & (table.degradation == name)))
    return masks


def plot_score_histograms(table: RecordTable, view: dict[str, Any] | None = None) -> bytes | None:
    """Small multiples of the fused score, real vs AI-generated, one panel per degradation group of the view."""
    groups = _group_masks(table, view)
    if not groups:
        return None
    columns = min(4, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = _figure(3.2 * columns, 2.6 * rows)
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, sharex=True, squeeze=False)).reshape(-1)
    edges = np.linspace(0, 1, 21)
    for axes, (name, mask) in zip(axes_grid, groups):
        for label, color, text in ((0, "C0", "real"), (1, "C3", "AI-generated")):
            values = table.score[mask & (table.label == label)]
            if values.size:
                axes.hist(values, bins=edges, color=color, alpha=0.55, label=f"{text} (n={values.size})")
        axes.set_title(name if len(name) <= 40 else name[:37] + "...", fontsize=9)
        axes.tick_params(labelbottom=True, labelsize=7)
        axes.legend(fontsize=7)
    for axes in axes_grid[len(groups):]:
        axes.set_visible(False)
    figure.supxlabel("fused P(AI-generated)")
    return _png_bytes(figure)


def plot_heatmap(view: dict[str, Any]) -> bytes:
    """The robustness heat map as PNG bytes (see :func:`heatmap_figure`)."""
    return _png_bytes(heatmap_figure(view))


def heatmap_figure(view: dict[str, Any]):
    """ROC AUC per degradation group (rows) x generator (columns), n in every cell, colour scale over [0, 1].

    Degradations are rows so that their names read horizontally; generators, usually few, are the columns."""
    generators = view["generators"]
    values = np.array([[np.nan if auc is None else auc for auc, _ in cells] for _, _, cells in view["rows"]], float)
    rows, columns = values.shape
    label_width = min(3.2, 0.5 + 0.075 * max(len(name) for name, _, _ in view["rows"]))
    figure = _figure(min(11.0, label_width + 2.0 + 1.5 * columns), 1.6 + 0.42 * rows)
    axes = figure.subplots()
    import matplotlib

    colours = matplotlib.colormaps["RdYlGn"]
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0.0, vmax=1.0, aspect="auto")
    names = [name if len(name) <= 44 else name[:41] + "..." for name in generators]
    axes.set_xticks(range(columns), labels=names, rotation=20 if columns > 3 else 0,
                    ha="right" if columns > 3 else "center", fontsize=8)
    axes.xaxis.tick_top()
    axes.set_yticks(range(rows), labels=[name for name, _, _ in view["rows"]], fontsize=9)
    axes.set_ylabel(view["kind"])
    from matplotlib.patches import Rectangle

    for r, (_, n_real, cells) in enumerate(view["rows"]):
        for c, (auc, n_fake) in enumerate(cells):
            shade = colours(auc) if auc is not None else (1, 1, 1, 1)
            ink = "white" if auc is not None and 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.45 \
                else "black"
            if auc is not None and n_fake < view["few"]:  # a handful of images: washed out, the number kept
                axes.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="white", alpha=0.65, linewidth=0))
                ink = "0.35"
            text = "n/a" if auc is None else f"{auc:.2f}"
            axes.text(c, r, f"{text}\nn={n_fake}+{n_real}", ha="center", va="center", fontsize=8, color=ink,
                      linespacing=1.1)
    bar = figure.colorbar(image, ax=axes, shrink=min(1.0, 6.0 / max(rows, 1)) if rows > 6 else 1.0)
    bar.set_label("ROC AUC (0.5 = chance, 1 = perfect)", fontsize=8)
    bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.set_title(f"ROC AUC per generator\nn = AI-generated + real images in the cell; pale: under {view['few']} "
                   "AI-generated", fontsize=9)
    return figure


def plot_severity_curves(metrics: dict[str, Any], view: dict[str, Any] | None,
                         min_images: int = MIN_GROUP_IMAGES) -> bytes | None:
    """Fused ROC AUC against severity level: all degraded images pooled per level (n marked), plus each chain of the
    view when the view's rows are chains; levels with fewer than ``min_images`` images are left out."""
    breakdown = metrics.get("breakdown", {})

    def points(per_level: dict[str, Any]) -> list[tuple[int, float, int]]:
        return sorted((int(level), cell["roc_auc"], _n(cell)) for level, cell in per_level.items()
                      if level.isdigit() and cell.get("roc_auc") is not None and _n(cell) >= min_images)

    pooled = points(breakdown.get("per_severity", {}))
    lines = []
    if view is not None and view["kind"] == "degradation chain":
        for name, _, _ in view["rows"][:10]:
            chain_points = points(breakdown.get("per_degradation_severity", {}).get(name, {}))
            if len(chain_points) > 1:
                lines.append((name, chain_points))
    if not pooled and not lines:
        return None
    figure = _figure(8, 4.5)
    axes = figure.subplots()
    axes.axhline(0.5, color="0.6", linestyle=":", linewidth=1, label="chance (0.5)")
    for index, (chain, chain_points) in enumerate(lines):
        axes.plot([p[0] for p in chain_points], [p[1] for p in chain_points], marker="o", color=f"C{index % 10}",
                  linewidth=1, label=chain)
    if pooled:
        axes.plot([p[0] for p in pooled], [p[1] for p in pooled], marker="o", color="black", linewidth=2.2,
                  label="all degraded images")
        for level, auc, count in pooled:
            axes.annotate(f"n={count}", (level, auc), textcoords="offset points", xytext=(0, 7), ha="center",
                          fontsize=7)
    axes.set_xlabel("severity level (highest operator level in the chain)")
    axes.set_ylabel("ROC AUC within the level")
    axes.set_xticks(range(1, 6))
    axes.set_xlim(0.5, 5.5)
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize=7, loc="lower left")
    axes.set_title(f"ROC AUC by severity level (fused score; levels with at least {min_images} images)")
    return _png_bytes(figure)


# -- sections ---------------------------------------------------------------------------------------------------------

GLOSSARY: tuple[tuple[str, str], ...] = (
    ("ROC AUC", "Area under the ROC curve: the probability that a randomly chosen AI-generated image scores higher "
                "than a randomly chosen real one (a tie counts one half). 0.5 = chance, 1.0 = perfect; below 0.5 the "
                "score ranks the classes the wrong way round. It does not depend on a threshold."),
    ("clean ROC AUC", "ROC AUC over the undegraded images."),
    ("robust ROC AUC", "ONE ROC AUC over every degraded image pooled (all degradation chains, severities and "
                       "generators, real and AI-generated together), never an average of per-group AUCs: the NTIRE "
                       "2026 primary metric. A score scale that shifts with the degradation lowers it even when each "
                       "group separates well."),
    ("robust - clean", "Robust ROC AUC minus clean ROC AUC: what the degradations cost (negative = worse)."),
    ("95% CI", "95% confidence interval of a ROC AUC: stratified bootstrap (real and AI-generated images resampled "
               "separately, with replacement), percentile interval."),
    ("AP", "Average precision: the area under the precision-recall curve with AI-generated as the positive class "
           "(sum over thresholds of recall gained x precision). Chance level = the share of AI-generated images."),
    ("accuracy", "Share of images called correctly at the decision threshold (score >= threshold is called "
                 "AI-generated)."),
    ("balanced acc.", "Balanced accuracy: (TPR + TNR) / 2 at the threshold, both classes weighted equally; 0.5 = "
                      "chance."),
    ("TPR", "True-positive rate: the share of AI-generated images called AI-generated (detection rate)."),
    ("FPR", "False-positive rate: the share of real images called AI-generated (false alarms)."),
    ("TPR@FPR 1%", "The highest TPR at any threshold whose FPR is at most 1% (likewise TPR@FPR 5%): the detection "
                   "rate when false alarms are capped. With n real images FPR moves in steps of 1/n."),
    ("EER", "Equal error rate: the error rate at the threshold where FPR equals the miss rate (1 - TPR). 0 = "
            "perfect, 0.5 = chance."),
    ("ECE", "Expected calibration error: the scores put in equal-width bins over [0, 1]; the bin-size-weighted "
            "mean of |fraction AI-generated - mean score|. 0 = a score of 0.8 means 80% of such images are "
            "AI-generated."),
    ("Brier", "Brier score: mean of (score - label)^2. 0 = perfect; 0.25 = always answering 0.5."),
    ("mean score", "Mean fused score (P(AI-generated)) of the real and of the AI-generated images of the row: shows "
                   "how a degradation shifts the score scale."),
    ("n", "Number of scored images in the row or cell (a degraded copy is an image of its own): n real, n AI "
          "(AI-generated). Numbers from a few images are noise: 1 image gives 0 or 1."),
    ("inconclusive", "A calibrated score inside the inconclusive band [low, high) around the threshold: neither "
                     "'ai' nor 'real' is called. TPR and FPR when decided leave those images out."),
    ("other side", "Share of images where this member alone, thresholded like the ensemble, is called the other way "
                   "from the ensemble."),
    ("members split", "Share of images where the members fall on both sides of the threshold (the disagreement "
                      "column of fdcore predict)."),
)


def _glossary(used_text: str) -> list[tuple[str, str]]:
    """The glossary entries whose term the report uses (ROC AUC and n always)."""
    return [(term, text) for term, text in GLOSSARY if term in ("ROC AUC", "n") or term in used_text]


DETAIL_COLUMNS = ("scorer", "n real", "n AI", "AP", "accuracy", "balanced acc.", "TPR@FPR 1%", "TPR@FPR 5%", "EER",
                  "ECE", "Brier")
GROUP_COLUMNS = ("group", "n real", "n AI", "ROC AUC", "AP", "accuracy", "balanced acc.", "mean score real",
                 "mean score AI", "ECE")
GROUP_KEYS = ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "mean_score_real", "mean_score_fake",
              "ece")


def _group_row(name: str, cell: dict[str, Any]) -> list[str]:
    return [name, str(cell.get("n_real", 0)), str(cell.get("n_fake", 0))] + [_number(cell.get(key))
                                                                              for key in GROUP_KEYS]


def _group_blocks(groups: dict[str, Any], min_images: int, what: str, size: Callable[[dict], int] = _n,
                  unit: str = "images",
                  pooled: Callable[[list[str]], dict[str, Any] | None] | None = None) -> list[Any]:
    """A breakdown table of the groups with at least ``min_images`` (``size`` counts them, in ``unit``); the smaller
    ones pooled into one row (when ``pooled`` can compute it) and counted in a line under the table."""
    large = {name: cell for name, cell in groups.items() if size(cell) >= min_images}
    small = [name for name in groups if name not in large]
    blocks: list[Any] = []
    rows = [_group_row(name, cell) for name, cell in large.items()]
    note = ""
    if small:
        pooled_cell = pooled(small) if pooled else None
        if pooled_cell is not None:
            rows.append(_group_row(f"{_plural(len(small), what)} under {min_images} {unit}, pooled", pooled_cell))
        note = (f"{_plural(len(small), what)} with fewer than {min_images} {unit} each "
                f"({sum(size(groups[name]) for name in small)} {unit} in all) "
                + ("are pooled into the last row" if pooled_cell is not None else "are not listed")
                + "; metrics.json has every one.")
    if rows:
        blocks.append(Table(list(GROUP_COLUMNS), rows))
    if note:
        blocks.append(note)
    return blocks


def _image_counts(table: RecordTable) -> dict[str, Any]:
    """Distinct images (by path when the records carry it) per class, generator and source."""
    keys = np.array([str(value) for value in table.extra.get("path", table.image_id)], dtype=object)
    base = table.clean if table.clean.any() else np.ones(len(table), dtype=bool)
    seen: dict[str, int] = {}
    generators: dict[str, int] = {}
    sources: dict[str, dict[str, int]] = {}
    for key, label, generator, source in zip(keys[base], table.label[base], table.generator[base],
                                             table.source[base]):
        if key in seen:
            continue
        seen[key] = int(label)
        if label == 1:
            generators[generator] = generators.get(generator, 0) + 1
        counts = sources.setdefault(source, {"real": 0, "fake": 0})
        counts["fake" if label == 1 else "real"] += 1
    fake = sum(seen.values())
    return {"images": len(seen), "real": len(seen) - fake, "fake": fake, "generators": generators,
            "sources": sources}


def _about(metrics: dict[str, Any], table: RecordTable, written_at: str) -> Section:
    """What was evaluated: ensemble, data, variants, seed, versions."""
    evaluation = metrics.get("evaluation") or {}
    settings = metrics.get("settings", {})
    produced = metrics.get("produced_by", {})
    counts = _image_counts(table)
    rows: list[list[str]] = []
    blocks: list[Any] = []
    ensemble = evaluation.get("ensemble")
    if ensemble:
        rows.append(["ensemble", f"{ensemble.get('source')} ({ensemble.get('kind')})"])
        rows.append(["ensemble identity", str(ensemble.get("identity"))])
        weights = evaluation.get("weights")
        rows.append(["fusion", f"{evaluation.get('aggregator')}"
                     + (f", weights {', '.join(f'{w:g}' for w in weights)}" if weights else "")
                     + (", calibrated scores" if evaluation.get("calibrated") else ", raw (uncalibrated) scores")
                     + (f", {evaluation.get('precision')}" if evaluation.get("precision") else "")])
    else:
        rows.append(["ensemble", "not recorded (metrics computed outside fdcore evaluate); scorers: "
                     + ", ".join([FUSED_LABEL] + sorted(table.experts))])
    data = evaluation.get("data") or {}
    sources = (data.get("spec") or {}).get("sources") or []
    if sources:
        rows.append(["data", "; ".join(f"{source.get('name')} ({source.get('kind')}): {source.get('location')}"
                                       for source in sources)])
    images = f"{counts['images']} images: {counts['real']} real, {counts['fake']} AI-generated"
    listed = ((data.get("counts") or {}).get("all") or {}).get("rows")
    selected = evaluation.get("images")
    if isinstance(listed, int) and isinstance(selected, int) and listed > selected:  # --max-images
        images += f" (a seeded, label-stratified subset of the {listed} listed)"
    rows.append(["images", images])
    rows.append(["per source", "; ".join(f"{name}: {value['real']} real, {value['fake']} AI-generated"
                                         for name, value in sorted(counts["sources"].items()))])
    rows.append(["AI-generated per generator", "; ".join(f"{name}: {count}" for name, count
                                                         in sorted(counts["generators"].items())) or "none"])
    skipped = evaluation.get("skipped")
    if skipped:
        rows.append(["skipped", f"{len(skipped)} image(s) could not be scored (metrics.json evaluation.skipped)"])
    variants = evaluation.get("variants")
    degraded = metrics.get("counts", {}).get(DEGRADED, {}).get("n", int(table.degraded.sum()))
    if variants:
        rows.append(["degradation suite", (f"{variants.get('suite')}: {_plural(variants.get('copies', 0), 'copy', 'copies')}"
                                           f" of every image ({degraded} degraded images)")
                     if variants.get("suite") else "none (clean images only)"])
        operators = variants.get("sweep_operators") or []
        levels = variants.get("sweep_levels") or []
        rows.append(["sweep", (f"{', '.join(operators)} at levels {', '.join(str(level) for level in levels)} "
                               "(reported apart, not in the robust ROC AUC)") if operators else "none"])
        rows.append(["seed", f"{variants.get('seed')} (degradation draws and bootstrap)"
                     if variants.get("seed") == settings.get("seed")
                     else f"{variants.get('seed')} (degradation draws), {settings.get('seed')} (bootstrap)"])
    else:
        rows.append(["degraded images", f"{degraded} in {len(set(table.degradation[table.degraded]))} chains"])
        rows.append(["seed", f"{settings.get('seed')} (bootstrap)"])
    rows.append(["bootstrap", f"{settings.get('bootstrap', 0)} replicates per interval"])
    threshold = metrics.get("operating_point")
    rows.append(["decision threshold", f"{_number(settings.get('threshold'), 4)} "
                 + ("(calibrated threshold chosen on validation data)" if threshold
                    else "(fixed, not chosen on validation data)")])
    rows.append(["fdcore", f"{evaluation.get('fdcore') or produced.get('fdcore')} (Python {produced.get('python')}, "
                           f"numpy {produced.get('numpy')}, evaluate {produced.get('evaluate')})"])
    rows.append(["written", written_at])
    blocks.append(Table(["", ""], rows, kind="kv"))
    if ensemble and ensemble.get("experts"):
        members = [["member", "expert", "weight", "input", "identity"]]
        for member in ensemble["experts"]:
            preprocessing = member.get("preprocessing") or {}
            size = preprocessing.get("size")
            resize = preprocessing.get("resize")
            crops = preprocessing.get("crops")
            members.append([str(member.get("name")), str(member.get("expert")), _number(member.get("weight"), 2),
                            f"{size} px, {resize}" + (f", {crops} crops" if crops else ""),
                            _short(member.get("identity"))])
        blocks += [Subheading("Members"), Table(members[0], members[1:], kind="text")]
    return Section("about", "What was evaluated", blocks)


def _headline(metrics: dict[str, Any]) -> Section:
    counts = metrics.get("counts", {})
    cards = []
    for condition, key, label in ((CLEAN, "clean", "Clean ROC AUC"), (DEGRADED, "robust", "Robust ROC AUC")):
        value, interval = metrics.get(f"{key}_roc_auc"), metrics.get(f"{key}_roc_auc_ci")
        count = counts.get(condition, {})
        lines = [reading_of_auc(value, interval)]
        lines.append(f"{count.get('n_real', 0)} real and {count.get('n_fake', 0)} AI-generated "
                     + ("undegraded images." if condition == CLEAN else "degraded images, pooled."))
        cards.append(Card(label, _with_ci(value, interval), lines))
    clean, robust = metrics.get("clean_roc_auc"), metrics.get("robust_roc_auc")
    if clean is not None and robust is not None:
        cards[1].lines.append(f"Degradations change it by {robust - clean:+.3f} from the clean value.")
    scorers = [(FUSED_LABEL, metrics)] + sorted(metrics.get("experts", {}).items())
    rows = []
    for name, values in scorers:
        clean, robust = values.get("clean_roc_auc"), values.get("robust_roc_auc")
        delta = f"{robust - clean:+.3f}" if clean is not None and robust is not None else "n/a"
        rows.append([name, _with_ci(clean, values.get("clean_roc_auc_ci")),
                     _with_ci(robust, values.get("robust_roc_auc_ci")), delta])

    def sized(label: str, condition: str) -> str:
        count = counts.get(condition, {})
        return f"{label} (n={count.get('n_real', 0)} real + {count.get('n_fake', 0)} AI)"

    header = ["scorer", sized("clean ROC AUC [95% CI]", CLEAN), sized("robust ROC AUC [95% CI]", DEGRADED),
              "robust - clean"]
    settings = metrics.get("settings", {})
    return Section("headline", "Headline", [
        "ROC AUC: 0.5 = chance, 1.0 = perfect. Clean = the undegraded images; robust = one ROC AUC over all "
        "degraded images pooled (the NTIRE 2026 metric). Intervals: 95% stratified bootstrap, "
        f"{settings.get('bootstrap', 0)} replicates, seed {settings.get('seed')}.",
        *cards,
        Subheading("The ensemble next to each expert"),
        Table(header, rows),
    ])


def _operating(metrics: dict[str, Any]) -> list[Section]:
    threshold = metrics.get("settings", {}).get("threshold")
    scorers = [(FUSED_LABEL, metrics.get("fused", {}))] + sorted(metrics.get("experts", {}).items())
    blocks: list[Any] = [f"Threshold-dependent metrics use the threshold {_number(threshold, 4)} (score >= "
                         "threshold is called AI-generated); AP, TPR@FPR and EER do not depend on it."]
    for condition, title in ((CLEAN, "Clean images"), (DEGRADED, "Degraded images, pooled")):
        rows = []
        for name, section in scorers:
            cell = section.get(condition)
            if cell:
                rows.append([name, str(cell.get("n_real", 0)), str(cell.get("n_fake", 0))] + [
                    _number(cell.get(key)) for key in ("average_precision", "accuracy", "balanced_accuracy",
                                                       "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "eer", "ece",
                                                       "brier")])
        if rows:
            blocks += [Subheading(title), Table(list(DETAIL_COLUMNS), rows)]
    sections = [Section("operating", "Operating metrics per scorer", blocks)]

    operating_point = metrics.get("operating_point")
    if operating_point:
        validation = operating_point["validation"]
        fused = metrics.get("fused", {})
        rows = [["validation (where the threshold was chosen)", str(validation.get("n_real", "n/a")),
                 str(validation.get("n_fake", "n/a")), _number(validation.get("validation_fpr"), 4),
                 _number(validation.get("validation_tpr"), 4)]]
        rows += [[f"held-out, {condition}", str(fused.get(condition, {}).get("n_real", "n/a")),
                  str(fused.get(condition, {}).get("n_fake", "n/a")), _number(rates["fpr"], 4),
                  _number(rates["tpr"], 4)]
                 for condition, rates in operating_point["held_out"].items()]
        sections.append(Section("operating-point", "Operating point", [
            f"Threshold {_number(validation.get('value'), 4)} chosen on validation for FPR <= "
            f"{validation.get('target_fpr')}; a held-out FPR far above the target means the validation data does not "
            "represent this data.",
            Table(["data", "n real", "n AI", "FPR", "TPR"], rows)]))

    decisions = metrics.get("decisions")
    if decisions:
        band = decisions.get("inconclusive")
        confusion, rates = [], []
        for condition in (CLEAN, DEGRADED):
            cell = decisions.get(condition)
            if not cell:
                continue
            confusion += [[condition, outcome, str(counts["real"]), str(counts["fake"]),
                           str(counts["real"] + counts["fake"])] for outcome, counts in cell["confusion"].items()]
            rates.append([condition, str(cell.get("n")), _number(cell.get("inconclusive_share")),
                          _number(cell.get("tpr_when_decided")), _number(cell.get("fpr_when_decided"))])
        sections.append(Section("decisions", "Calibrated decisions", [
            f"Calibrated decisions at threshold {_number(decisions.get('threshold'), 4)}"
            + (f" with the inconclusive band [{band[0]:g}, {band[1]:g})" if band else "")
            + ": what fdcore predict would answer for these images.",
            Table(["images", "decision", "n real", "n AI", "n"], confusion),
            Table(["images", "n", "inconclusive share", "TPR when decided", "FPR when decided"], rates)]))
    return sections


def _agreement(metrics: dict[str, Any]) -> Section:
    agreement = metrics.get("agreement")
    if not agreement:
        return Section("agreement", "Per-expert agreement", [
            "Not computed: per-expert agreement needs at least two members scored by fdcore evaluate (it thresholds "
            "each member like the ensemble)."])
    conditions = [condition for condition in (CLEAN, DEGRADED) if agreement.get(condition)]
    members = sorted({name for condition in conditions for name in agreement[condition]["other_side"]})
    rows = [[name] + [_share(agreement[condition]["other_side"][name], agreement[condition]["n"])
                      for condition in conditions] for name in members]
    rows.append(["members split (any two on opposite sides)"]
                + [_share(agreement[condition]["members_split"], agreement[condition]["n"])
                   for condition in conditions])
    scale = "calibrated" if agreement.get("calibrated") else "raw"
    return Section("agreement", "Per-expert agreement", [
        f"Each member thresholded alone at {_number(agreement.get('threshold'), 4)} ({scale} scale, as the fused "
        "score): how often it sits on the other side from the ensemble, and how often the members split (fdcore "
        "predict's disagreement). A member often on the other side is carried, or outvoted, by the others.",
        Table(["member"] + [f"{condition}: other side" for condition in conditions], rows)])


def _breakdowns(metrics: dict[str, Any], table: RecordTable, min_images: int) -> Section:
    breakdown = metrics.get("breakdown", {})
    threshold = float(metrics.get("settings", {}).get("threshold", 0.5))
    bins = int(metrics.get("settings", {}).get("ece_bins", 15))
    blocks: list[Any] = [f"Fused score. Rows with fewer than {min_images} images are pooled or summarised, not "
                         "listed: their numbers are mostly noise."]

    def pooled_chains(names: list[str]) -> dict[str, Any] | None:
        mask = table.degraded & np.isin(table.degradation, [name for name in names if name != CLEAN])
        return binary_metrics(table.label[mask], table.score[mask], threshold, bins, "pooled chains") \
            if mask.any() else None

    for key, title, what, pooled in (
            ("per_degradation", "Per degradation chain (clean for comparison)", "chain", pooled_chains),
            ("per_operator", "Per operator: degraded images whose chain contains it", "operator", None),
            ("per_severity", "Per severity level, all degradations pooled", "level", None)):
        if breakdown.get(key):
            blocks += [Subheading(title), *_group_blocks(breakdown[key], min_images, what, pooled=pooled)]
    for operator, per_level in breakdown.get("sweep", {}).items():
        if per_level:
            blocks += [Subheading(f"Sweep: {operator} at each level (not part of the robust AUC)"),
                       *_group_blocks({f"level {level}": cell for level, cell in per_level.items()}, min_images,
                                      "level")]
    for key, title, what, size, unit in (
            ("per_generator", "Per generator: its AI-generated images vs all real images", "generator",
             lambda cell: int(cell.get("n_fake") or 0), "AI-generated images"),
            ("per_source", "Per source", "source", _n, "images")):
        for condition, groups in breakdown.get(key, {}).items():
            if groups:
                blocks += [Subheading(f"{title} ({condition})"),
                           *_group_blocks(groups, min_images, what, size=size, unit=unit)]
    if len(blocks) == 1:
        blocks = ["No breakdown: the records carry no degradations, generators or sources."]
    return Section("breakdown", "Breakdowns", blocks)


def _left_out(view: dict[str, Any], min_images: int) -> str:
    """'12 chains under 20 images (40 images)'; operators overlap, so their images are not summed."""
    groups, images = view["dropped"]
    total = f" ({images} images)" if view["kind"] != "operator" else ""
    return f"{_plural(groups, view['kind'])} under {min_images} images{total}"


def _matrix_section(view: dict[str, Any] | None, min_images: int) -> Section | None:
    if view is None:
        return None
    header = [view["kind"], "n real"] + [f"{generator}: ROC AUC (n AI)" for generator in view["generators"]]
    rows = [[name, str(n_real)] + [f"{_number(auc)} ({n_fake})" for auc, n_fake in cells]
            for name, n_real, cells in view["rows"]]
    blocks: list[Any] = [f"ROC AUC per {view['kind']} x generator (the heat map's numbers). Each cell: that "
                         f"generator's AI-generated images against all real images under that {view['kind']}, with "
                         f"the cell's n AI; n real is per row. Rows with at least {min_images} images."]
    blocks.append(Table(header, rows))
    if view["dropped"][0]:
        blocks.append(f"{_left_out(view, min_images)} not shown.")
    if view["generators_dropped"]:
        blocks.append(f"{_plural(view['generators_dropped'], 'smaller generator')} not shown (metrics.json).")
    return Section("matrix", "Robustness matrix", blocks)


def _setting(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _settings(metrics: dict[str, Any]) -> Section:
    rows = [[key, _setting(value)] for key, value in sorted(metrics.get("settings", {}).items())]
    rows += [[f"version: {name}", str(version)] for name, version in sorted(metrics.get("produced_by", {}).items())]
    evaluation = metrics.get("evaluation") or {}
    for key in ("aggregator", "weights", "calibrated", "precision"):
        if key in evaluation:
            rows.append([f"evaluation: {key}", _setting(evaluation[key])])
    rows += [["note", note] for note in metrics.get("notes", [])]
    return Section("settings", "Settings and provenance", [
        "Everything here is also in metrics.json (settings, produced_by, evaluation, notes).",
        Table(["setting", "value"], rows, kind="kv")])


def build_sections(metrics: dict[str, Any], table: RecordTable, figures: list[Figure], view: dict[str, Any] | None,
                   min_images: int = MIN_GROUP_IMAGES, written_at: str = "") -> list[Section]:
    """The report as sections in reading order: what was evaluated, headline, plots, glossary, tables, settings."""
    plots = Section("plots", "Plots", list(figures) or ["No plots."])
    tables = _operating(metrics) + [_agreement(metrics), _breakdowns(metrics, table, min_images)]
    matrix = _matrix_section(view, min_images)
    if matrix is not None:
        tables.append(matrix)
    head = [_about(metrics, table, written_at), _headline(metrics), plots]
    used = " ".join(_section_text(section) for section in head + tables)
    glossary = Section("glossary", "How to read the numbers", [
        "Label 1 = AI-generated; a score is the fused P(AI-generated), higher = more likely generated.",
        Definitions(_glossary(used))])
    return head + [glossary] + tables + [_settings(metrics)]


def _section_text(section: Section) -> str:
    parts = [section.heading]
    for block in section.blocks:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Table):
            parts += block.header
        elif isinstance(block, Subheading):
            parts.append(block.text)
        elif isinstance(block, Card):
            parts += [block.label, *block.lines]
        elif isinstance(block, Figure):
            parts.append(block.caption)
    return " ".join(parts)


# -- rendering --------------------------------------------------------------------------------------------------------

def _markdown_cell(text: Any) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {_markdown_cell(title)}", ""]
    for section in sections:
        lines += [f"## {_markdown_cell(section.heading)}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [_markdown_cell(block), ""]
            elif isinstance(block, Subheading):
                lines += [f"### {_markdown_cell(block.text)}", ""]
            elif isinstance(block, Card):
                lines += [f"**{_markdown_cell(block.label)}: {_markdown_cell(block.value)}**", ""]
                lines += [f"- {_markdown_cell(line)}" for line in block.lines] + [""]
            elif isinstance(block, Figure):
                caption = _markdown_cell(block.caption)
                lines += [f"![{caption}]({block.filename})", "", f"*{caption}* ({block.filename})", ""]
            elif isinstance(block, Definitions):
                lines += [f"- **{_markdown_cell(term)}**: {_markdown_cell(text)}" for term, text in block.items]
                lines.append("")
            elif isinstance(block, Table):
                header = block.header if any(block.header) else ["item", "value"]
                lines.append("| " + " | ".join(_markdown_cell(cell) for cell in header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in block.rows]
                lines.append("")
    return "\n".join(lines)


_CSS = """*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 2em;max-width:1200px;color:#222;line-height:1.4}
h1{margin:.3em 0}h2{margin:1.4em 0 .4em;border-bottom:1px solid #ddd}h3{margin:1em 0 .3em;font-size:1.05em}
nav{font-size:.9em;margin:.3em 0 1em;display:flex;flex-wrap:wrap;gap:.2em 1em}
.scroll{overflow-x:auto;max-width:100%;margin:.3em 0 1.1em}
table{border-collapse:collapse;font-size:.88em}th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f0f0f0;font-weight:600}td{text-align:right;font-variant-numeric:tabular-nums}td.t{text-align:left}
td:first-child{text-align:left;overflow-wrap:break-word;min-width:7em;max-width:28em}
table.kv td,table.text td{text-align:left}table.kv td+td{overflow-wrap:anywhere}
table.kv td:first-child{font-weight:600;min-width:7em;overflow-wrap:normal}
table.kv thead{display:none}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:.8em 0}
.card{flex:1 1 320px;border:1px solid #ccc;border-radius:6px;padding:.7em 1em;background:#fafafa}
.card .label{font-weight:600}.card .value{font-size:1.7em;font-weight:700;font-variant-numeric:tabular-nums}
.card ul{margin:.3em 0 0;padding-left:1.2em}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.9em;color:#444}
figure.native .scroll{margin:0}figure.native img{max-width:none}
dl dt{font-weight:700;margin-top:.5em}dl dd{margin:0 0 0 1.2em}
@media (max-width:600px){body{padding:.5em .7em}h1{font-size:1.45em}h2{font-size:1.2em}
table{font-size:.8em}td:first-child{min-width:5em}.card .value{font-size:1.35em}}"""


def _breakable(text: Any) -> str:
    """Escaped text that may wrap after '+' and '_' (degradation chains and operator names have no spaces)."""
    return html.escape(str(text)).replace("+", "+<wbr>").replace("_", "_<wbr>")


def _html_cell(column: int, cell: Any) -> str:
    """A table cell: the first column may wrap inside names; words other than numbers are left-aligned."""
    if column == 0:
        return f"<td>{_breakable(cell)}</td>"
    text = str(cell)
    numeric = text[:1].isdigit() or text[:2] in ("-0", "+0", "-1", "+1") or text.startswith("n/a")
    return f"<td>{html.escape(text)}</td>" if numeric else f"<td class=\"t\">{html.escape(text)}</td>"


def _html(title: str, sections: list[Section]) -> str:
    escape = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{escape(title)}</h1>",
             "<nav>" + "".join(f"<a href=\"#{section.key}\">{escape(section.heading)}</a>" for section in sections)
             + "</nav>"]
    for section in sections:
        parts.append(f"<section id=\"{section.key}\"><h2>{escape(section.heading)}</h2>")
        cards: list[str] = []
        for block in section.blocks:
            if isinstance(block, Card):
                cards.append(f"<div class=\"card\"><div class=\"label\">{escape(block.label)}</div>"
                             f"<div class=\"value\">{escape(block.value)}</div><ul>"
                             + "".join(f"<li>{escape(line)}</li>" for line in block.lines) + "</ul></div>")
                continue
            if cards:
                parts.append("<div class=\"cards\">" + "".join(cards) + "</div>")
                cards = []
            if isinstance(block, str):
                parts.append(f"<p>{escape(block)}</p>")
            elif isinstance(block, Subheading):
                parts.append(f"<h3>{escape(block.text)}</h3>")
            elif isinstance(block, Figure):
                encoded = base64.b64encode(block.data).decode("ascii")
                image = (f"<a href=\"{escape(block.filename)}\"><img src=\"data:image/png;base64,{encoded}\" "
                         f"alt=\"{escape(block.caption)}\"></a>")
                if block.filename in NATIVE_SIZE_PLOTS:  # numbers in cells: shown at full size, scrolled if need be
                    parts.append(f"<figure class=\"native\"><div class=\"scroll\">{image}</div>")
                else:
                    parts.append(f"<figure>{image}")
                parts.append(f"<figcaption>{escape(block.caption)} (file: <code>{escape(block.filename)}</code>)"
                             "</figcaption></figure>")
            elif isinstance(block, Definitions):
                parts.append("<dl>" + "".join(f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>"
                                              for term, text in block.items) + "</dl>")
            elif isinstance(block, Table):
                parts.append(f"<div class=\"scroll\"><table class=\"{block.kind}\"><thead><tr>"
                             + "".join(f"<th>{escape(str(cell))}</th>" for cell in block.header)
                             + "</tr></thead><tbody>")
                parts += ["<tr>" + "".join(_html_cell(column, cell) for column, cell in enumerate(row)) + "</tr>"
                          for row in block.rows]
                parts.append("</tbody></table></div>")
        if cards:
            parts.append("<div class=\"cards\">" + "".join(cards) + "</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(metrics: dict[str, Any], records, out_dir, title: str = "fdcore evaluation report",
                 min_group_images: int = MIN_GROUP_IMAGES) -> dict[str, Path]:
    """Write ``metrics.json``, the PNG plots, ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        metrics: the dict from :func:`fdcore.metrics.compute_metrics` for these records (with the ``evaluation`` and
            ``agreement`` sections ``fdcore evaluate`` adds, the report also says what was evaluated and how often
            the members disagree).
        records: the scored records (list of dicts, dict of columns or a ``RecordTable``); plots need the scores.
        out_dir: folder to write into (created if missing). Each file is replaced atomically.
        title: report title (escaped).
        min_group_images: breakdown rows, heat-map rows and severity points with fewer images are pooled, summarised
            or left out (the report says how many).

    Returns:
        ``{file name: path}`` of everything written.
    """
    if not isinstance(metrics, dict) or metrics.get("format") != "fdcore.metrics":
        raise ReportError("write_report needs the metrics dict from fdcore.metrics.compute_metrics")
    table = records if isinstance(records, RecordTable) else normalize_records(records)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"cannot create the report folder {out_dir}: {error}") from error
    try:
        metrics_text = json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ReportError(f"metrics are not JSON-ready (NaN or a non-JSON value): {error}") from error

    min_images = max(1, int(min_group_images))
    bins = int(metrics.get("settings", {}).get("ece_bins", 15))
    view = robustness_view(metrics, min_images)
    plots: list[tuple[str, str, Callable[[], bytes | None]]] = [
        (ROC_PNG, "ROC curves, clean and robust: the fused score (black) and each expert; the dotted diagonal is "
                  "chance", lambda: plot_roc_curves(table)),
        (RELIABILITY_PNG, "Reliability of the fused score: observed fraction AI-generated against the mean score per "
                          "bin (on the diagonal = calibrated), image counts per bin underneath",
         lambda: plot_reliability(table, bins)),
    ]
    if view is not None:
        left_out = f"; {_left_out(view, min_images)} left out" if view["dropped"][0] else ""
        plots.append((HISTOGRAMS_PNG, f"Fused score histograms, real vs AI-generated, per {view['kind']} with at "
                                      f"least {min_images} images{left_out}",
                      lambda: plot_score_histograms(table, view)))
        plots.append((HEATMAP_PNG, f"Robustness heat map: ROC AUC per {view['kind']} x generator, colour scale "
                                   f"0 to 1 (yellow = 0.5 = chance); each cell shows n = AI-generated + real "
                                   f"images, pale cells have fewer than {view['few']} AI-generated images{left_out}",
                      lambda: plot_heatmap(view)))
    else:
        plots.append((HISTOGRAMS_PNG, "Fused score histograms, real vs AI-generated",
                      lambda: plot_score_histograms(table, None)))
    plots.append((SEVERITY_PNG, f"ROC AUC by severity level: all degraded images pooled per level (n marked) and "
                                f"the chains with enough images; levels under {min_images} images left out",
                  lambda: plot_severity_curves(metrics, view, min_images)))

    written: dict[str, Path] = {}
    figures: list[Figure] = []
    written_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        write_bytes_atomic(out_dir / "metrics.json", metrics_text.encode("utf-8"))
        written["metrics.json"] = out_dir / "metrics.json"
        for filename, caption, render in plots:
            data = render()
            if data is None:
                continue
            write_bytes_atomic(out_dir / filename, data)
            written[filename] = out_dir / filename
            figures.append(Figure(filename, caption, data))
        for filename in PLOT_FILES:  # a plot this evaluation has no data for: an older report's must not linger
            if filename not in written:
                (out_dir / filename).unlink(missing_ok=True)
        sections = build_sections(metrics, table, figures, view, min_images, written_at)
        write_bytes_atomic(out_dir / "report.md", _markdown(title, sections).encode("utf-8"))
        written["report.md"] = out_dir / "report.md"
        write_bytes_atomic(out_dir / "report.html", _html(title, sections).encode("utf-8"))
        written["report.html"] = out_dir / "report.html"
    except OSError as error:
        raise ReportError(f"cannot write the report into {out_dir}: {error}") from error
    return written
