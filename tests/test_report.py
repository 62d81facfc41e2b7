"""The report renders: files exist, PNGs decode, HTML embeds and names them, user strings are escaped."""

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image

from fdcore.metrics import compute_metrics, normalize_records
from fdcore.report import (
    HEATMAP_PNG,
    HISTOGRAMS_PNG,
    MAX_GROUPS,
    RELIABILITY_PNG,
    ROC_PNG,
    ReportError,
    plot_roc_curves,
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


def test_report_renders_with_embedded_named_plots(tmp_path):
    records = scored_records()
    operating_point = {"value": 0.6, "target_fpr": 0.05, "validation_fpr": 0.049, "validation_tpr": 0.7}
    metrics = compute_metrics(records, bootstrap=50, seed=3, operating_point=operating_point)
    written = write_report(metrics, records, tmp_path / "out", title="Eval <of> 'ensemble' & co")
    out = tmp_path / "out"
    for name in ("metrics.json", "report.md", "report.html", ROC_PNG, RELIABILITY_PNG, HISTOGRAMS_PNG, HEATMAP_PNG):
        assert (out / name).is_file() and written[name] == out / name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    page = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")
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
    assert "jpeg|&lt;b&gt;+gaussian_blur" in page
    assert "jpeg\\|&lt;b&gt;+gaussian_blur" in markdown  # pipes would split a Markdown table cell

    # headline: the ensemble next to every expert, with the pooled robust AUC and its interval
    assert "ensemble (fused)" in page and "| clip |" in markdown and "| siglip |" in markdown
    assert "Operating point: threshold 0.6000 chosen on validation for FPR &lt;= 0.05" in page
    assert "| validation (where the threshold was chosen) | 0.0490 | 0.7000 |" in markdown
    robust = f"{metrics['robust_roc_auc']:.3f} [{metrics['robust_roc_auc_ci'][0]:.3f}"
    assert robust in markdown and robust in page


def test_report_without_clean_images_and_with_many_chains_uses_operator_heatmap(tmp_path):
    operators = [f"op{k}" for k in range(8)]
    chains = [f"{a}+{b}" for a in operators for b in operators if a < b]  # 28 chains > MAX_GROUPS
    assert len(chains) > MAX_GROUPS
    records = scored_records(seed=1, n=300, chains=chains, clean=False)
    metrics = compute_metrics(records, bootstrap=0)
    written = write_report(metrics, records, tmp_path)
    assert metrics["clean_roc_auc"] is None
    assert HEATMAP_PNG in written and "per generator x operator" in (tmp_path / "report.md").read_text()
    assert "| n/a |" in (tmp_path / "report.md").read_text()  # the absent clean AUC
    with Image.open(tmp_path / HISTOGRAMS_PNG) as image:
        image.load()


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
