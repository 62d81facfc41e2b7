"""The report renders and explains itself: sections in reading order, every image it references exists, every metric
it shows is defined, small groups are pooled not listed, heat-map cells carry n, settings are a table."""

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from fdcore.metrics import compute_metrics, normalize_records
from fdcore.report import (
    GLOSSARY,
    HEATMAP_PNG,
    HISTOGRAMS_PNG,
    MAX_GROUPS,
    MIN_GROUP_IMAGES,
    RELIABILITY_PNG,
    SEVERITY_PNG,
    ROC_PNG,
    ReportError,
    heatmap_figure,
    plot_heatmap,
    plot_roc_curves,
    reading_of_auc,
    robustness_view,
    write_report,
)

HOSTILE_GENERATOR = "<script>alert('x')</script>"
HOSTILE_DEGRADATION = "jpeg|<b>+gaussian_blur"


def scored_records(seed=0, n=240, chains=("jpeg", "gaussian_blur", HOSTILE_DEGRADATION), clean=True):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = i % 2
        degraded = not clean or i >= n // 4
        chain = chains[i % len(chains)] if degraded else ""
        logit = rng.normal(1.2 if label else -1.2, 1.0) - (0.8 if chain.startswith("jpeg") else 0.0)
        records.append({
            "image_id": f"img{i:04d}.png",
            "label": label,
            "score": float(1 / (1 + np.exp(-logit))),
            "expert:clip": float(1 / (1 + np.exp(-(logit + rng.normal(0, 1))))),
            "expert:siglip": float(1 / (1 + np.exp(-1.5 * logit))),
            "generator": ("sd15", HOSTILE_GENERATOR)[i % 4 // 2] if label else "",
            "source": ("coco", "laion")[i % 3 == 0],
            "degradation": chain,
            "severity": int(rng.integers(1, 6)) if chain else 0,
        })
    return records


class Page(HTMLParser):
    """The report's structure: section ids in order, tables per section (header + rows), images, links, glossary."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.tables, self.images, self.links, self.terms = [], [], [], [], []
        self.section = None
        self._cell, self._row, self._table, self._in_dt, self._header_row = None, None, None, False, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
            self.sections.append(self.section)
        elif tag == "table":
            self._table = {"section": self.section, "kind": attrs.get("class"), "header": [], "rows": []}
        elif tag == "tr":
            self._row, self._header_row = [], False
        elif tag in ("td", "th"):
            self._cell = []
            self._header_row = self._header_row or tag == "th"
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a" and not attrs["href"].startswith("#"):
            self.links.append(attrs["href"])
        elif tag == "dt":
            self._in_dt = True
            self.terms.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table is not None:
            if self._header_row:
                self._table["header"] = self._row
            else:
                self._table["rows"].append(self._row)
        elif tag == "table":
            self.tables.append(self._table)
            self._table = None
        elif tag == "dt":
            self._in_dt = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_dt:
            self.terms[-1] += data


def report(tmp_path, records=None, metrics=None, **options):
    records = records if records is not None else scored_records()
    metrics = metrics or compute_metrics(records, bootstrap=20, seed=3)
    written = write_report(metrics, records, tmp_path / "out", **options)
    out = tmp_path / "out"
    page = (out / "report.html").read_text(encoding="utf-8")
    return metrics, written, out, page, Page(page), (out / "report.md").read_text(encoding="utf-8")


def test_report_renders_with_embedded_named_plots(tmp_path):
    records = scored_records()
    operating_point = {"value": 0.6, "target_fpr": 0.05, "validation_fpr": 0.049, "validation_tpr": 0.7}
    metrics = compute_metrics(records, bootstrap=50, seed=3, operating_point=operating_point)
    metrics, written, out, page, _, markdown = report(tmp_path, records, metrics, title="Eval <of> 'ensemble' & co")
    for name in ("metrics.json", "report.md", "report.html", ROC_PNG, RELIABILITY_PNG, HISTOGRAMS_PNG, HEATMAP_PNG):
        assert (out / name).is_file() and written[name] == out / name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    pngs = [name for name in written if name.endswith(".png")]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pngs)
    for name, data in zip(pngs, embedded):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
        assert base64.b64decode(data) == (out / name).read_bytes()  # the page holds exactly the file next to it
        assert f"<code>{name}</code>" in page and f"({name})" in markdown
    assert "src=\"http" not in page and "<link" not in page  # self-contained

    # user strings are escaped, never injected
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Eval &lt;of&gt; &#x27;ensemble&#x27; &amp; co" in page
    assert "jpeg|<b>" not in page and "jpeg|<b>" not in markdown
    assert "jpeg|&lt;b&gt;+<wbr>gaussian_<wbr>blur" in page  # chains may wrap after + and _
    assert "jpeg\\|&lt;b&gt;+gaussian_blur" in markdown  # pipes would split a Markdown table cell

    # headline: the ensemble next to every expert, with the pooled robust AUC and its interval
    assert "ensemble (fused)" in page and "| clip |" in markdown and "| siglip |" in markdown
    assert "Threshold 0.6000 chosen on validation for FPR &lt;= 0.05" in page
    assert "| validation (where the threshold was chosen) | n/a | n/a | 0.0490 | 0.7000 |" in markdown
    robust = f"{metrics['robust_roc_auc']:.3f} [{metrics['robust_roc_auc_ci'][0]:.3f}"
    assert robust in markdown and robust in page


def test_sections_come_in_reading_order_in_html_and_markdown(tmp_path):
    _, _, _, _, parsed, markdown = report(tmp_path)
    sections = parsed.sections
    assert sections[:4] == ["about", "headline", "plots", "glossary"] and sections[-1] == "settings"
    assert {"operating", "agreement", "breakdown", "matrix"} <= set(sections)
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[:4] == ["What was evaluated", "Headline", "Plots", "How to read the numbers"]
    assert headings[-1] == "Settings and provenance" and len(headings) == len(sections)
    plots = markdown.index("## Plots")
    assert markdown.index("![") > plots and markdown.index("### Per degradation chain") > plots  # plots first


def test_every_referenced_image_and_file_exists(tmp_path):
    _, written, out, _, parsed, markdown = report(tmp_path)
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    files = {name: (out / name).read_bytes() for name in written if name.endswith(".png")}
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in parsed.images) == sorted(files.values())
    for link in parsed.links:  # each plot links to its PNG next to the page
        assert (out / link).is_file(), link
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert referenced and all((out / name).is_file() for name in referenced)
    assert set(referenced) == set(files)


def test_every_metric_shown_is_defined_in_the_glossary(tmp_path):
    records = scored_records()
    metrics = compute_metrics(records, bootstrap=20, operating_point={"value": 0.6, "target_fpr": 0.05,
                                                                     "validation_fpr": 0.05, "validation_tpr": 0.6})
    _, _, _, page, parsed, markdown = report(tmp_path, records, metrics)
    terms = parsed.terms
    assert terms[0] == "ROC AUC" and set(terms) <= {term for term, _ in GLOSSARY}
    body = page.split('<section id="glossary">')[0] + page.split('<section id="glossary">')[1].split("</section>", 1)[1]
    for abbreviation in ("AUC", "AP", "EER", "ECE", "Brier", "TPR", "FPR", "CI", "balanced acc."):
        if re.search(rf"(?<![A-Za-z]){re.escape(abbreviation)}(?![A-Za-z])", body):
            assert any(abbreviation in term for term in terms), abbreviation
    structural = {"scorer", "group", "member", "expert", "weight", "input", "identity", "images", "data", "decision",
                  "setting", "value", "", "operator", "degradation chain"}
    for table in parsed.tables:
        for column in table["header"]:
            name = re.sub(r"\s*\((n=|n AI).*\)$|\s*\[95% CI\]|^clean: |^degraded: |^.*: ROC AUC", "", column).strip()
            name = name or "ROC AUC"
            assert name in structural or any(term in name or name in term for term in terms), column
    assert "0.5 = chance, 1.0 = perfect" in page and "0.5 = chance, 1.0 = perfect" in markdown


def test_no_metric_cell_without_its_n(tmp_path):
    _, _, _, _, parsed, _ = report(tmp_path)
    metric_columns = {"ROC AUC", "AP", "accuracy", "balanced acc.", "ECE", "Brier", "EER", "TPR", "FPR"}
    checked = 0
    for table in parsed.tables:
        if table["kind"] != "data" or not any(any(m in column for m in metric_columns) for column in table["header"]):
            continue
        checked += 1
        has_n_column = any(column.startswith("n ") or column == "n" for column in table["header"])
        for column, name in enumerate(table["header"]):
            if any(m in name for m in metric_columns) and not has_n_column and "n=" not in name:
                assert all(re.search(r"\((\d+|\d+ of \d+)\)$", row[column]) for row in table["rows"]), name
    assert checked >= 5


def test_chains_under_the_threshold_are_pooled_not_listed(tmp_path):
    big = ["jpeg", "gaussian_blur"]
    small = [f"op{k}+jpeg" for k in range(30)]
    chains = tuple(big * 15 + small)  # each big chain ~3/4 of 240 records / 60 x 15; each small chain ~1-3 images
    records = scored_records(seed=4, n=400, chains=chains)
    _, _, _, _, parsed, markdown = report(tmp_path, records)
    table = next(t for t in parsed.tables if t["section"] == "breakdown" and t["header"][0] == "group")
    names = [row[0] for row in table["rows"]]
    assert names[:3] == ["clean", "gaussian_blur", "jpeg"]
    assert not any(name.startswith("op") for name in names)  # the 1-3 image chains are not rows
    pooled = table["rows"][-1]
    assert pooled[0] == f"30 chains under {MIN_GROUP_IMAGES} images, pooled"
    n_small = sum(1 for record in records if record["degradation"] in small)
    assert int(pooled[1]) + int(pooled[2]) == n_small
    assert f"30 chains with fewer than {MIN_GROUP_IMAGES} images each ({n_small} images in all) are pooled" \
        in markdown
    assert f"Rows with fewer than {MIN_GROUP_IMAGES} images are pooled or summarised" in markdown


def test_heatmap_is_readable_cells_carry_n_and_scale_is_0_to_1(tmp_path):
    operators = [f"op{k}" for k in range(8)]
    chains = [f"{a}+{b}" for a in operators for b in operators if a < b]  # 28 chains > MAX_GROUPS
    assert len(chains) > MAX_GROUPS
    records = scored_records(seed=1, n=300, chains=chains, clean=False)
    metrics, written, _, _, parsed, markdown = report(tmp_path, records, compute_metrics(records, bootstrap=0))
    assert metrics["clean_roc_auc"] is None and "| n/a |" in markdown  # the absent clean AUC
    view = robustness_view(metrics)
    assert view["kind"] == "operator" and [row[0] for row in view["rows"]] == operators  # chains too small
    assert HEATMAP_PNG in written and "ROC AUC per operator x generator" in markdown

    figure = heatmap_figure(view)
    axes = figure.axes[0]
    assert axes.get_images()[0].get_clim() == (0.0, 1.0)  # 0.27 and 0.5 get different colours
    assert [label.get_text() for label in axes.get_yticklabels()] == operators  # degradations read horizontally
    texts = [text.get_text() for text in axes.texts]
    cells = len(view["rows"]) * len(view["generators"])
    assert len(texts) == cells and all(re.fullmatch(r"(\d\.\d\d|n/a)\nn=\d+\+\d+", text) for text in texts)
    assert figure.get_size_inches()[0] <= 11.0  # fits the page width (1200 px at 100 dpi)

    matrix = next(t for t in parsed.tables if t["section"] == "matrix")
    assert matrix["header"][:2] == ["operator", "n real"]
    assert all(re.fullmatch(r"(\d\.\d{3}|n/a) \(\d+\)", cell) for row in matrix["rows"] for cell in row[2:])
    with Image.open(tmp_path / "out" / HISTOGRAMS_PNG) as image:
        image.load()


def test_settings_are_a_table_not_a_json_dump(tmp_path):
    metrics, _, _, page, parsed, markdown = report(tmp_path)
    settings = [t for t in parsed.tables if t["section"] == "settings"]
    assert len(settings) == 1 and settings[0]["header"] == ["setting", "value"]
    rows = dict(settings[0]["rows"])
    assert rows["threshold"] == "0.5" and rows["bootstrap"] == "20" and rows["version: fdcore"]
    assert "<pre>" not in page and "```" not in markdown


def test_headline_reads_each_auc_against_chance():
    assert "chance" in reading_of_auc(0.52, [0.45, 0.6]) and "contains 0.5" in reading_of_auc(0.52, [0.45, 0.6])
    assert "strong" in reading_of_auc(0.93, [0.9, 0.95])
    assert "worse than chance" in reading_of_auc(0.3, [0.25, 0.35])
    assert "Not measured" in reading_of_auc(None)


def test_an_evaluation_report_says_what_was_evaluated_and_how_members_agree(toy_ensemble, tmp_path):
    from conftest import make_learnable_folder

    from fdcore.evaluation import VariantPlan, run_evaluation

    data = make_learnable_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "eval"
    metrics = run_evaluation(toy_ensemble, [str(data)], out, VariantPlan(copies=1, seed=7,
                                                                         sweep_operators=("jpeg",)),
                             bootstrap=10, workers=0)
    parsed = Page((out / "report.html").read_text(encoding="utf-8"))
    about = dict(next(t for t in parsed.tables if t["section"] == "about")["rows"])
    identity = metrics["evaluation"]["ensemble"]["identity"]
    assert about["ensemble"].startswith(str(toy_ensemble)) and about["ensemble identity"] == identity
    assert str(data) in about["data"]
    assert about["images"] == "20 images: 10 real, 10 AI-generated"
    assert about["degradation suite"] == "ntire2026-test-like: 1 copy of every image (20 degraded images)"
    assert about["sweep"].startswith("jpeg at levels 1, 2, 3, 4, 5")
    assert about["seed"] == "7 (degradation draws and bootstrap)" and about["fdcore"].startswith("0.")
    members = next(t for t in parsed.tables if t["section"] == "about" and t["header"][0] == "member")
    assert [row[0] for row in members["rows"]] == ["one", "two"]

    agreement = metrics["agreement"]
    assert agreement["threshold"] == 0.5 and not agreement["calibrated"]
    clean = agreement["clean"]
    assert clean["n"] == 20 and set(clean["other_side"]) == {"one", "two"}
    # the same rule as predict's disagreement column: members split exactly when their calls differ
    import csv

    with open(out / "records.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["condition"] == "clean"]
    calls = [{float(row["expert:one"]) >= 0.5, float(row["expert:two"]) >= 0.5} for row in rows]
    assert clean["members_split"] == sum(len(call) == 2 for call in calls)
    assert clean["other_side"]["one"] == sum((float(row["expert:one"]) >= 0.5) != (float(row["score"]) >= 0.5)
                                             for row in rows)
    table = next(t for t in parsed.tables if t["section"] == "agreement")
    assert [row[0] for row in table["rows"]] == ["one", "two", "members split (any two on opposite sides)"]
    assert all(re.fullmatch(r"\d+\.\d% \(\d+ of \d+\)", cell) for row in table["rows"] for cell in row[1:])


def test_report_rejects_a_non_metrics_dict(tmp_path):
    with pytest.raises(ReportError, match="compute_metrics"):
        write_report({"auc": 0.9}, scored_records(n=8), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_metrics_and_plots_are_deterministic():
    records = scored_records(seed=2, n=80)
    first, second = (compute_metrics(records, bootstrap=20, seed=0) for _ in range(2))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    table = normalize_records(records)
    assert plot_roc_curves(table) == plot_roc_curves(table)  # no timestamp or version chunk in the PNG
    view = robustness_view(first)
    assert plot_heatmap(view) == plot_heatmap(view)


def test_a_report_rewritten_in_place_keeps_no_plot_of_the_previous_evaluation(tmp_path):
    _, first, out, _, _, _ = report(tmp_path)
    assert SEVERITY_PNG in first
    clean_only = [record for record in scored_records() if not record["degradation"]]
    _, written, out, page, _, markdown = report(tmp_path, clean_only)  # no degraded image: no severity plot
    assert SEVERITY_PNG not in written and not (out / SEVERITY_PNG).exists()
    on_disk = sorted(path.name for path in out.glob("*.png"))
    assert on_disk == sorted(name for name in written if name.endswith(".png"))
    assert all(f"({name})" in markdown for name in on_disk)
