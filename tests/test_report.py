"""The qualification report: each plot drawn from what it needs (and skipped without it), and
the whole page opened in a real headless browser (Debian's chromium), where every image must
render."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deepcompress.qualify._metric import primary_metric
from deepcompress.qualify._plots import (histograms_plot, latency_plot, layers_plot,
                                         metric_size_plot, trend_plot)
from deepcompress.qualify._report import qualify_page, trend_panels
from deepcompress.qualify.history import open_history

from test_history import record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PNG = b"\x89PNG\r\n\x1a\n"
LAYERS = [{"name": "fc1", "type": "Linear", "sparsity": 0.92, "bits": 4},
          {"name": "fc2", "type": "Linear", "sparsity": 0.91, "bits": 5},
          {"name": "fc3", "type": "Linear", "sparsity": 0.74, "bits": None}]
REPORT = {"layers": LAYERS, "dense_bytes": 1_066_440, "compressed_bytes": 24_500,
          "accuracy": {"baseline": 0.897, "final": 0.893,
                       "stages": {"1_prune": 0.895, "2_share": 0.890, "3_finetune": 0.893}},
          "stage_ratios": [{"stage": "pruning", "file": "/r/stages/1_prune.dcz", "bytes": 180_000},
                           {"stage": "pruning + sharing", "file": "/r/stages/3_finetune.dcz", "bytes": 27_000},
                           {"stage": "pruning + sharing + coding", "file": "/r/model.dcz", "bytes": 24_500}]}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as the pipeline leaves it: the resolved recipe and two checkpoints, the
    shared one holding exactly its centroids' values."""
    torch.manual_seed(0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps({"recipe": {"stages": [
        {"kind": "prune", "name": "1_prune"}, {"kind": "share", "name": "2_share"}]}, "sha256": "x"}))
    dense = {"fc1.weight": torch.randn(30, 40) * 0.05, "fc1.bias": torch.zeros(30),
             "fc2.weight": torch.randn(10, 30) * 0.1}
    torch.save({"state_dict": dense, "masks": {}, "centroids": {}, "assignments": {}, "bits": {}},
               run / "checkpoints" / "0_baseline.pt")
    shared, centroids = {}, {}
    for name in ("fc1", "fc2"):
        w = dense[f"{name}.weight"]
        c = torch.linspace(float(w.min()), float(w.max()), 8)
        idx = (w.unsqueeze(-1) - c).abs().argmin(-1)
        keep = w.abs() > w.abs().quantile(0.8)
        shared[f"{name}.weight"] = torch.where(keep, c[idx], torch.zeros(()))
        centroids[name] = c
    torch.save({"state_dict": {**dense, **shared}, "masks": {}, "centroids": centroids,
                "assignments": {}, "bits": {}}, run / "checkpoints" / "2_share.pt")
    return run


def test_each_plot_draws_what_it_is_given_and_nothing_without_it(run_dir):
    metric = primary_metric(REPORT)
    bench = [{"ok": True, "artifact": "/a/model.tflite", "device": {"serial": "host"},
              "latencies_ms": [1.0, 1.1, 0.9, 1.05]},
             {"ok": False, "artifact": "/a/model.tflite", "device": {"spec": "phone"}}]
    for png in (layers_plot(LAYERS), histograms_plot(run_dir), metric_size_plot(REPORT, metric),
                latency_plot(bench)):
        width, height = png_size(png)
        assert width > 300 and height > 150
    assert layers_plot([]) is None and histograms_plot(None) is None
    assert histograms_plot(run_dir.parent) is None                        # no checkpoints there
    assert metric_size_plot({**REPORT, "stage_ratios": []}, metric) is None
    assert latency_plot(bench[1:]) is None
    assert trend_plot("t", [{"label": "p50", "x": [], "y": []}]) is None


def test_the_metric_against_size_plot_reads_a_label_free_report():
    report = {**REPORT, "primary_metric": {"name": "cosine_mean", "baseline": 1.0, "final": 0.996},
              "metrics": {"1_prune": {"cosine_mean": 0.998}, "3_finetune": {"cosine_mean": 0.996}}}
    metric = primary_metric(report)
    assert metric.name == "cosine_mean"
    assert png_size(metric_size_plot(report, metric))[0] > 300


def test_trends_carry_the_threshold_each_run_was_judged_by(tmp_path):
    with open_history(tmp_path / "h.sqlite") as h:
        for p50, ok in ((1.0, True), (1.02, True), (1.3, False)):
            h.record(record(p50=p50, ok=ok))
        series = h.series(kind="qualify", name="q")
    panels = {p["label"]: p for p in trend_panels(series, lambda r: r["id"])}
    p50 = panels["latency_p50_ms tflite on host"]
    assert p50["y"] == [1.0, 1.02, 1.3] and p50["failed"] == [False, False, True]
    assert set(panels) == {"latency_p50_ms tflite on host", "size_bytes tflite", "accuracy"}
    assert png_size(trend_plot("trend", list(panels.values())))[0] > 300


def make_report(tmp_path: Path, run_dir: Path) -> Path:
    """A report page with every kind of plot, from a history of three runs."""
    with open_history(tmp_path / "h.sqlite") as h:
        for p50 in (1.0, 1.02, 0.98):
            last = h.record(record(p50=p50))
        results = {
            "ok": True, "verdict": "12/12 gates hold", "run_id": last, "git_revision": "abc+dirty",
            "recipe_sha256": "r" * 64, "host": "vm", "phases": {"compress": 1.0, "total": 2.0},
            "metric": primary_metric(REPORT).to_dict(), "compress": {"how": "reused"},
            "gates": [{"gate": "max_size_bytes", "figure": "size_bytes", "subject": "dcz", "ok": True,
                       "actual": 24_500, "limit": 30_000, "skipped": "", "message": ""},
                      {"gate": "regression", "figure": "latency_p50_ms", "subject": "tflite on host <b>",
                       "ok": False, "actual": 1.3, "limit": 1.25, "baseline": 1.0, "skipped": "",
                       "message": "slower & <worse>"}],
            "artifacts": {"dcz": {"bytes": 24_500, "zipped_bytes": 24_000, "sha256": "d" * 64,
                                  "ok": True, "cached": False}},
            "bench": {"host": [{"ok": True, "artifact": "/a/model.tflite", "runs": 4,
                                "device": {"serial": "host", "model": "CPU"},
                                "latency_ms": {"p50": 1.0, "p90": 1.1}, "peak_memory_mb": 50.0,
                                "latencies_ms": [1.0, 1.1, 0.9, 1.05]}]},
        }
        path = tmp_path / "report.html"
        path.write_bytes(qualify_page(results, SimpleNamespace(report=REPORT, run_dir=run_dir), h, "q"))
    return path


def test_the_report_is_one_self_contained_page(tmp_path, run_dir):
    page = make_report(tmp_path, run_dir).read_text()
    assert page.count("<img alt=\"") == 5 and page.count("data:image/png;base64,") == 5
    assert not re.search(r'(src|href)="(?!data:)', page), "the page links to something outside it"
    assert "<script" not in page
    assert "tflite on host &lt;b&gt;" in page and "slower &amp; &lt;worse&gt;" in page
    assert "git abc+dirty" in page


CHECK = ("<script>addEventListener('load', () => document.body.setAttribute('data-images', "
         "[...document.images].map(i => i.complete ? i.naturalWidth + 'x' + i.naturalHeight : 'pending')"
         ".join(',')))</script>")


def rendered(page: Path, tmp_path: Path) -> list[str]:
    """Open ``page`` in headless chromium and return each image's natural size as it rendered
    (0x0: broken). A copy of the page gets a script that records them once the page loaded."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="([^"]*)"', done.stdout)
    assert match, f"chromium did not load the page: {done.stderr[-2000:]}"
    return match.group(1).split(",")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")
def test_every_image_renders_in_a_real_browser(tmp_path, run_dir):
    page = make_report(tmp_path, run_dir)
    sizes = rendered(page, tmp_path)
    assert len(sizes) == 5
    assert all(s != "pending" and not s.startswith("0x") for s in sizes), sizes
    # the check itself: a broken image is seen as broken
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert rendered(broken, tmp_path)[0] == "0x0"
