"""The evaluation report: ``metrics.json``, ``report.md``, a self-contained ``report.html`` and the PNG plots.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), imported only when a report
is written. Every user-supplied string (generator, source, degradation names, title) is escaped in HTML and Markdown.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fdcore.fileio import write_bytes_atomic
from fdcore.errors import FdcoreError
from fdcore.metrics.records import CLEAN, DEGRADED, RecordTable, normalize_records
from fdcore.metrics.scores import reliability_bins, roc_curve

ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability.png"
HISTOGRAMS_PNG = "score_histograms.png"
HEATMAP_PNG = "robustness_heatmap.png"
SEVERITY_PNG = "severity_curves.png"
# Beyond this many degradation chains, histograms and the heat map switch to per-operator groups.
MAX_GROUPS = 24
FUSED_LABEL = "ensemble (fused)"


class ReportError(FdcoreError):
    """A report that cannot be written (bad metrics dict or unwritable folder)."""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
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
        axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        axes.set_title(f"{'Clean' if condition == CLEAN else 'Robust (all degraded images pooled)'} "
                       f"n={int(mask.sum())}")
        axes.set_xlabel("false-positive rate (real called AI-generated)")
        axes.set_ylabel("true-positive rate")
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
        curve_axes.set_title(f"{condition}: fused score, {bins} equal-width bins")
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


def _degradation_groups(table: RecordTable) -> list[tuple[str, np.ndarray]]:
    """Clean, then each degradation chain, or each operator when there are more than MAX_GROUPS chains."""
    groups = [(CLEAN, table.clean)] if table.clean.any() else []
    chains = sorted({str(chain) for chain in table.degradation[table.degraded]})
    if len(chains) <= MAX_GROUPS:
        groups += [(chain, table.degraded & (table.degradation == chain)) for chain in chains]
    else:
        operators = table.operators()
        names = sorted({name for chain in operators for name in chain})
        groups += [(f"contains {name}", table.degraded & np.array([name in chain for chain in operators]))
                   for name in names]
    return groups


def plot_score_histograms(table: RecordTable) -> tuple[bytes, int]:
    """Small multiples of the fused score, real vs AI-generated, one panel per degradation group."""
    groups = _degradation_groups(table)
    shown = groups[:MAX_GROUPS]
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = _figure(3.2 * columns, 2.6 * rows)
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, sharex=True, squeeze=False)).reshape(-1)
    edges = np.linspace(0, 1, 21)
    for axes, (name, mask) in zip(axes_grid, shown):
        for label, color, text in ((0, "C0", "real"), (1, "C3", "AI-generated")):
            values = table.score[mask & (table.label == label)]
            if values.size:
                axes.hist(values, bins=edges, color=color, alpha=0.55, label=f"{text} ({values.size})")
        axes.set_title(name if len(name) <= 40 else name[:37] + "...", fontsize=9)
        axes.tick_params(labelbottom=True, labelsize=7)
        axes.legend(fontsize=7)
    for axes in axes_grid[len(shown):]:
        axes.set_visible(False)
    figure.supxlabel("fused P(AI-generated)")
    return _png_bytes(figure), len(groups) - len(shown)


def _heatmap_matrix(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    breakdown = metrics.get("breakdown", {})
    matrix = breakdown.get("generator_x_degradation")
    if matrix and len(matrix["columns"]) > MAX_GROUPS + 1:
        matrix = breakdown.get("generator_x_operator")
        return ("operator", matrix) if matrix and matrix["rows"] else None
    return ("degradation", matrix) if matrix and matrix["rows"] else None


def plot_heatmap(kind: str, matrix: dict[str, Any]) -> bytes:
    """Generator x degradation ROC AUC (each cell: that generator's fakes vs all reals under that degradation)."""
    values = np.array([[np.nan if value is None else value for value in row] for row in matrix["roc_auc"]], float)
    rows, columns = values.shape
    figure = _figure(max(6.0, 1.0 + 0.9 * columns), max(3.0, 1.2 + 0.45 * rows))
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    axes.set_xticks(range(columns), labels=matrix["columns"], rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(rows), labels=matrix["rows"], fontsize=8)
    axes.set_xlabel(kind)
    axes.set_ylabel("generator")
    if rows * columns <= 400:
        for r in range(rows):
            for c in range(columns):
                text = "n/a" if np.isnan(values[r, c]) else f"{values[r, c]:.2f}"
                axes.text(c, r, text, ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label="ROC AUC")
    axes.set_title(f"Robustness: ROC AUC per generator x {kind}")
    return _png_bytes(figure)


def plot_severity_curves(metrics: dict[str, Any]) -> bytes | None:
    """Fused ROC AUC against severity level, one line per degradation chain (at most MAX_GROUPS lines)."""
    table = metrics.get("breakdown", {}).get("per_degradation_severity", {})
    lines = []
    for chain, per_level in sorted(table.items()):
        points = sorted((int(level), cell["roc_auc"]) for level, cell in per_level.items()
                        if level.isdigit() and cell.get("roc_auc") is not None)
        if points:
            lines.append((chain, points))
    if not lines or len(lines) > MAX_GROUPS:
        return None
    figure = _figure(7, 4.5)
    axes = figure.subplots()
    for index, (chain, points) in enumerate(lines):
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{index % 10}", label=chain)
    axes.set_xlabel("severity level (highest operator level in the chain)")
    axes.set_ylabel("ROC AUC within the group")
    axes.set_xticks(range(1, 6))
    axes.set_ylim(min(0.5, min(p[1] for _, points in lines for p in points)) - 0.02, 1.01)
    axes.legend(fontsize=7)
    axes.set_title("Per-degradation ROC AUC by severity (fused score)")
    return _png_bytes(figure)


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


HEADLINE_COLUMNS = ("scorer", "clean ROC AUC [95% CI]", "robust ROC AUC [95% CI]", "robust - clean")
DETAIL_COLUMNS = ("scorer", "AP", "accuracy", "balanced acc.", "TPR@FPR 1%", "TPR@FPR 5%", "EER", "ECE", "Brier")
GROUP_COLUMNS = ("group", "n real", "n AI", "ROC AUC", "AP", "accuracy", "balanced acc.", "mean score real",
                 "mean score AI", "ECE")


def _sections(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report as (heading, content) pairs; content is a list of rows (header first) or a paragraph string."""
    scorers = [(FUSED_LABEL, metrics.get("fused", {}), metrics)] + [
        (name, section, section) for name, section in sorted(metrics.get("experts", {}).items())]
    headline = [list(HEADLINE_COLUMNS)]
    for name, _, values in scorers:
        clean, robust = values.get("clean_roc_auc"), values.get("robust_roc_auc")
        delta = f"{robust - clean:+.3f}" if clean is not None and robust is not None else "n/a"
        headline.append([name, _with_ci(clean, values.get("clean_roc_auc_ci")),
                         _with_ci(robust, values.get("robust_roc_auc_ci")), delta])
    sections: list[tuple[str, Any]] = [
        ("Headline: NTIRE 2026 metrics, ensemble vs each expert",
         "Robust ROC AUC is one ROC AUC pooled over all degraded images (every degradation, generator and both "
         "classes together); Clean ROC AUC is over the undegraded images. Intervals: stratified bootstrap, "
         f"{metrics.get('settings', {}).get('bootstrap', 0)} replicates, seed "
         f"{metrics.get('settings', {}).get('seed')}."),
        ("", headline),
    ]
    threshold = metrics.get("settings", {}).get("threshold")
    for condition, title in ((CLEAN, "Clean images"), (DEGRADED, "Degraded images (pooled)")):
        rows = [list(DETAIL_COLUMNS)]
        for name, section, _ in scorers:
            cell = section.get(condition)
            if cell:
                rows.append([name] + [_number(cell.get(key)) for key in (
                    "average_precision", "accuracy", "balanced_accuracy", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct",
                    "eer", "ece", "brier")])
        if len(rows) > 1:
            sections.append((f"{title}: operating metrics (threshold {threshold})", rows))

    operating_point = metrics.get("operating_point")
    if operating_point:
        validation = operating_point["validation"]
        rows = [["data", "FPR", "TPR"],
                ["validation (where the threshold was chosen)", _number(validation.get("validation_fpr"), 4),
                 _number(validation.get("validation_tpr"), 4)]]
        rows += [[f"held-out, {condition}", _number(rates["fpr"], 4), _number(rates["tpr"], 4)]
                 for condition, rates in operating_point["held_out"].items()]
        sections.append((f"Operating point: threshold {_number(validation.get('value'), 4)} chosen on validation "
                         f"for FPR <= {validation.get('target_fpr')}", rows))

    decisions = metrics.get("decisions")
    if decisions:
        band = decisions.get("inconclusive")
        rows = [["images", "decision", "real (n)", "AI-generated (n)"]]
        for condition in (CLEAN, DEGRADED):
            cell = decisions.get(condition)
            if cell:
                rows += [[condition, outcome, str(counts["real"]), str(counts["fake"])]
                         for outcome, counts in cell["confusion"].items()]
                rows.append([condition, "inconclusive share / TPR, FPR when decided",
                             _number(cell.get("inconclusive_share")),
                             f"{_number(cell.get('tpr_when_decided'))}, {_number(cell.get('fpr_when_decided'))}"])
        sections.append((f"Calibrated decisions at threshold {_number(decisions.get('threshold'), 4)}"
                         + (f", inconclusive band [{band[0]:g}, {band[1]:g})" if band else ""), rows))

    def group_rows(groups: dict[str, Any]) -> list[list[str]]:
        rows = [list(GROUP_COLUMNS)]
        for name, cell in groups.items():
            rows.append([name] + [_number(cell.get(key)) for key in (
                "n_real", "n_fake", "roc_auc", "average_precision", "accuracy", "balanced_accuracy",
                "mean_score_real", "mean_score_fake", "ece")])
        return rows

    breakdown = metrics.get("breakdown", {})
    for key, title in (("per_degradation", "Per degradation chain (fused score)"),
                       ("per_operator", "Per operator: degraded images whose chain contains it"),
                       ("per_severity", "Per severity level, all degradations pooled")):
        if breakdown.get(key):
            sections.append((title, group_rows(breakdown[key])))
    for operator, per_level in breakdown.get("sweep", {}).items():
        if per_level:
            sections.append((f"Sweep: {operator} at each level (not part of the robust AUC)",
                             group_rows({f"level {level}": cell for level, cell in per_level.items()})))
    for key, title in (("per_generator", "Per generator: its AI-generated images vs all real images"),
                       ("per_source", "Per source")):
        for condition, groups in breakdown.get(key, {}).items():
            if groups:
                sections.append((f"{title} ({condition})", group_rows(groups)))
    heatmap = _heatmap_matrix(metrics)
    if heatmap:
        kind, matrix = heatmap
        rows = [["generator"] + list(matrix["columns"])]
        rows += [[generator] + [_number(value) for value in values]
                 for generator, values in zip(matrix["rows"], matrix["roc_auc"])]
        sections.append((f"Robustness matrix: ROC AUC per generator x {kind}", rows))
    provenance = {"settings": metrics.get("settings", {}), "produced_by": metrics.get("produced_by", {}),
                  "notes": metrics.get("notes", [])}
    sections.append(("Settings and provenance", json.dumps(provenance, indent=2, sort_keys=True)))
    return sections


def _markdown_cell(text: Any) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sections: list[tuple[str, Any]], figures: list[tuple[str, str]]) -> str:
    lines = [f"# {_markdown_cell(title)}", ""]
    for heading, content in sections:
        if heading:
            lines += [f"## {_markdown_cell(heading)}", ""]
        if isinstance(content, str):
            fence = "```" if heading == "Settings and provenance" else ""
            lines += ([fence, content, fence] if fence else [_markdown_cell(content)]) + [""]
            continue
        header, *body = content
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in body]
        lines.append("")
    lines += ["## Plots", ""]
    for filename, caption in figures:
        lines += [f"![{_markdown_cell(caption)}]({filename})", "", f"*{_markdown_cell(caption)}* ({filename})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}figure{margin:1em 0}
img{max-width:100%;border:1px solid #ddd}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:0.85em}"""


def _html(title: str, sections: list[tuple[str, Any]], figures: list[tuple[str, str, bytes]]) -> str:
    escape = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    for heading, content in sections:
        if heading:
            parts.append(f"<h2>{escape(heading)}</h2>")
        if isinstance(content, str):
            parts.append(f"<pre>{escape(content)}</pre>" if heading == "Settings and provenance"
                         else f"<p>{escape(content)}</p>")
            continue
        header, *body = content
        parts.append("<table><thead><tr>" + "".join(f"<th>{escape(str(cell))}</th>" for cell in header)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in body]
        parts.append("</tbody></table>")
    parts.append("<h2>Plots</h2>")
    for filename, caption, data in figures:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img src=\"data:image/png;base64,{encoded}\" alt=\"{escape(filename)}\">"
                     f"<figcaption>{escape(caption)} (file: <code>{escape(filename)}</code>)</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(metrics: dict[str, Any], records, out_dir, title: str = "fdcore evaluation report") -> dict[str, Path]:
    """Write ``metrics.json``, the PNG plots, ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        metrics: the dict from :func:`fdcore.metrics.compute_metrics` for these records.
        records: the scored records (list of dicts, dict of columns or a ``RecordTable``); plots need the scores.
        out_dir: folder to write into (created if missing). Each file is replaced atomically.
        title: report title (escaped).

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

    bins = int(metrics.get("settings", {}).get("ece_bins", 15))
    plots: list[tuple[str, str, Callable[[], bytes | None]]] = [
        (ROC_PNG, "ROC curves, clean vs robust, fused score and each expert", lambda: plot_roc_curves(table)),
        (RELIABILITY_PNG, "Reliability diagram of the fused score", lambda: plot_reliability(table, bins)),
    ]
    histogram_png, hidden_groups = plot_score_histograms(table)
    histogram_caption = "Fused score histograms, real vs AI-generated, per degradation"
    if hidden_groups:
        histogram_caption += f" (first {MAX_GROUPS} groups; {hidden_groups} more in metrics.json)"
    plots.append((HISTOGRAMS_PNG, histogram_caption, lambda: histogram_png))
    heatmap = _heatmap_matrix(metrics)
    if heatmap:
        plots.append((HEATMAP_PNG, f"Robustness heat map: ROC AUC per generator x {heatmap[0]}",
                      lambda: plot_heatmap(*heatmap)))
    plots.append((SEVERITY_PNG, "Per-degradation ROC AUC by severity level", lambda: plot_severity_curves(metrics)))

    written: dict[str, Path] = {}
    figures: list[tuple[str, str, bytes]] = []
    try:
        write_bytes_atomic(out_dir / "metrics.json", metrics_text.encode("utf-8"))
        written["metrics.json"] = out_dir / "metrics.json"
        for filename, caption, render in plots:
            data = render()
            if data is None:
                continue
            write_bytes_atomic(out_dir / filename, data)
            written[filename] = out_dir / filename
            figures.append((filename, caption, data))
        sections = _sections(metrics)
        markdown = _markdown(title, sections, [(filename, caption) for filename, caption, _ in figures])
        write_bytes_atomic(out_dir / "report.md", markdown.encode("utf-8"))
        written["report.md"] = out_dir / "report.md"
        write_bytes_atomic(out_dir / "report.html", _html(title, sections, figures).encode("utf-8"))
        written["report.html"] = out_dir / "report.html"
    except OSError as error:
        raise ReportError(f"cannot write the report into {out_dir}: {error}") from error
    return written
