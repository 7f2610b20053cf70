"""A qualification's files on names users choose (issue 19, items 7 and 12): a "$" in a name is a
dollar sign in every plot (matplotlib's mathtext failed the report after the run was recorded as
PASS, leaving the last run's files); the report, JUnit and results of a run are written together
or not at all, and the run is recorded only with them; control characters in a name leave the
JUnit file valid XML."""
from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import HOST_QUALIFY
from dccore.plots import png, pyplot
from deepcompress.cli import main
from deepcompress.qualify import _report
from deepcompress.qualify._gates import Gate
from deepcompress.qualify._outputs import junit_xml
from deepcompress.qualify._plots import latency_plot, layers_plot, trend_plot
from deepcompress.qualify.history import open_history

from test_nightly import tiny_dcz  # noqa: F401 (a fixture)

MATH = "cost$^$ of $\\frac{$"          # mathtext matplotlib cannot parse
CONTROL = "q\x1b]0;pwned\x07\x1b[2J\x00\x0b\ufffe"


def test_every_plot_draws_a_dollar_as_a_dollar():
    layers = [{"name": "fc$^$", "sparsity": 0.5, "bits": 4}, {"name": "x$1$", "sparsity": 0.2, "bits": None}]
    bench = [{"ok": True, "artifact": "/a/m$^$.tflite", "model": "m$^$", "slot": "s",
              "latencies_ms": [1.0, 1.2]}]
    panels = [{"label": "p50 $^$", "unit": "ms", "x": ["#1$", "#2$"], "y": [1.0, 1.1],
               "threshold": [None, 1.2], "failed": [False, True]}]
    for data in (layers_plot(layers), latency_plot(bench), trend_plot(MATH, panels)):
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_text_is_drawn_letter_for_letter():
    """The title and a string tick label come out as written (matplotlib's own reading of the
    text: not mathtext, and with the dollars); numeric tick labels keep their mathtext."""
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_yticks([0, 1], ["a$x^2$b", "c\\$d"])
    ax.set_xscale("log")
    ax.set_xlim(1, 1000)
    title = ax.set_title("p$x$q $$")
    png(fig)
    assert title._preprocess_math(title.get_text()) == ("p$x$q $$", False)
    labels = [t for t in ax.yaxis.get_ticklabels() if t.get_text()]
    assert [t._preprocess_math(t.get_text()) for t in labels] == [("a$x^2$b", False),
                                                                  ("c\\$d", False)]
    assert any(t._preprocess_math(t.get_text())[1] for t in ax.xaxis.get_ticklabels()
               if t.get_text())   # 10^0 .. 10^3: mathtext, as matplotlib means it


def test_junit_is_valid_xml_whatever_the_names_hold():
    gates = [Gate("max_size_bytes", "size_bytes", CONTROL, False, actual=2.0, limit=1.0,
                  message=f"too big {CONTROL}"),
             Gate("reachable", "device", CONTROL, True, skipped=CONTROL)]
    root = ET.fromstring(junit_xml(f"deepcompress.qualify.{CONTROL}", gates, 1.0))
    assert root.get("name").startswith("deepcompress.qualify.q\\x1b]0;pwned\\x07")
    for case in root.findall("testcase"):
        assert case.get("classname").startswith("q\\x1b]0;pwned\\x07\\x1b[2J\\x00")


def qualify(config: Path, out: Path) -> tuple[int, dict | None]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["qualify", str(config), "--out", str(out), "--json", "--quiet"])
    text = stdout.getvalue()
    return code, json.loads(text) if text.strip() else None


def test_a_run_is_recorded_with_its_three_files_or_not_at_all(tmp_path, tiny_dcz, monkeypatch):
    toml_name = MATH.replace("\\", "\\\\") + " \\u001b]0;pwned\\u0007 \\u0000"
    config = tmp_path / "q.toml"
    config.write_text(HOST_QUALIFY.format(name=toml_name, dcz=tiny_dcz, runs=3, timeout_s=120))
    out = tmp_path / "out"
    code, results = qualify(config, out)
    assert code == 0 and results["ok"], results
    name = results["name"]
    assert "$^$" in name and "\x1b" in name
    suite = ET.parse(out / "junit.xml").getroot()        # valid XML despite ESC, BEL and NUL
    assert suite.get("name").startswith("deepcompress.qualify.cost$^$") and "\\x1b" in suite.get("name")
    assert b"data:image/png;base64," in (out / "report.html").read_bytes()
    files = {p: p.read_bytes() for p in (out / "report.html", out / "junit.xml", out / "results.json")}
    with open_history(out / "history.sqlite") as h:
        assert [r["ok"] for r in h.runs()] == [True]

    def broken(*args, **kwargs):   # any failure while the files are written
        raise RuntimeError("the report failed")

    monkeypatch.setattr(_report, "qualify_page", broken)
    code, _ = qualify(config, out)
    assert code == 3
    assert {p: p.read_bytes() for p in files} == files    # the last run's files, all three
    assert not [p for p in out.iterdir() if ".dctmp-" in p.name]   # no temporary left
    with open_history(out / "history.sqlite") as h:
        assert len(h.runs()) == 1                           # and no run recorded without them


def test_three_files_are_replaced_together_or_not_at_all(tmp_path):
    from dccore.errors import UsageError
    from dccore.outputs import JSON_FILE, JUNIT_XML
    from deepcompress.qualify._outputs import HTML_REPORT, write_together

    old = {"report.html": b"", "junit.xml": b"<?xml version='1.0'?><testsuite/>",
           "results.json": b"{}"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("mine")
    files = [(tmp_path / "report.html", b"<html>new</html>", HTML_REPORT),
             (tmp_path / "junit.xml", b"<?xml version='1.0'?><testsuite name='new'/>", JUNIT_XML),
             (tmp_path / "notes.txt", b"{}", JSON_FILE)]          # not ours: refused
    with pytest.raises(UsageError, match="notes.txt"):
        write_together(files)
    assert {n: (tmp_path / n).read_bytes() for n in old} == old     # none replaced
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*old, "notes.txt"])
    write_together(files[:2] + [(tmp_path / "results.json", b'{"new": 1}', JSON_FILE)])
    assert (tmp_path / "junit.xml").read_bytes().endswith(b"name='new'/>")
    assert (tmp_path / "results.json").read_bytes() == b'{"new": 1}'
