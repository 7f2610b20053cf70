"""``deepcompress check``: the CI size gate, on artifacts whose sizes we choose."""
from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from conftest import place_users_own
from deepcompress.size_gate import load_budgets
from dccore.artifacts import artifact_size
from deepcompress.cli import main


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A 10,000-byte incompressible .tflite, a 10,000-byte all-zero .tflite, and a package folder."""
    a = tmp_path / "a.tflite"
    a.write_bytes(os.urandom(10_000))
    b = tmp_path / "b.tflite"
    b.write_bytes(bytes(10_000))
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_bytes(b"{}" * 100)
    (pkg / "Data" / "weight.bin").write_bytes(bytes(3_000))
    return {"a": a, "b": b, "pkg": pkg}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sizes_are_real_bytes_and_a_real_zip(files):
    assert artifact_size(files["a"]).bytes == 10_000
    assert artifact_size(files["pkg"]).bytes == 3_200   # every file of the package
    zipped = artifact_size(files["b"]).zipped_bytes
    assert 0 < zipped < 200   # 10 KB of zeros deflate to a few dozen bytes plus zip headers
    # ... and it is the size of an actual zip archive that unpacks to the file
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(files["b"], "b.tflite")
    assert zipped == buf.getbuffer().nbytes


def test_all_within_budget_exits_0(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", """
[artifacts."*.tflite"]
max_size_bytes = 10_000
max_zipped_bytes = 10_500
[artifacts."m.mlpackage"]
max_size_bytes = 4_000
""")
    code, out, _ = run(capsys, str(files["a"]), str(files["b"]), str(files["pkg"]),
                       "--budget", str(budget), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    assert report["artifacts"]["m.mlpackage"]["bytes"] == 3_200
    assert {(g["subject"], g["gate"]) for g in report["gates"]} == {
        ("a.tflite", "max_size_bytes"), ("a.tflite", "max_zipped_bytes"),
        ("b.tflite", "max_size_bytes"), ("b.tflite", "max_zipped_bytes"), ("m.mlpackage", "max_size_bytes")}


def test_over_budget_exits_1_with_a_table(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", """
[artifacts."*.tflite"]
max_size_bytes = 9_999
max_zipped_bytes = 5_000
""")
    code, out, _ = run(capsys, str(files["a"]), str(files["b"]), "--budget", str(budget))
    assert code == 1   # the table is a result: on stdout
    assert "FAIL" in out and "a.tflite: size_bytes 10,000 B > max_size_bytes 9,999 B" in out
    assert "2 artifact(s): 3/4 gates failed" in out   # a: bytes and zipped; b: bytes only (zeros zip well)


def test_name_beats_glob_and_longer_glob_beats_shorter(files, tmp_path):
    budget = write(tmp_path / "budgets.toml", """
[defaults]
size_pct = 5
[artifacts."*"]
max_size_bytes = 1
[artifacts."*.tflite"]
max_size_bytes = 2
[artifacts."a.tflite"]
max_size_bytes = 3
""")
    budgets = load_budgets(budget)
    assert budgets.for_artifact(files["a"])["max_size_bytes"] == 3
    assert budgets.for_artifact(files["b"])["max_size_bytes"] == 2
    assert budgets.for_artifact(files["pkg"]) == {"size_pct": 5.0, "max_size_bytes": 1,
                                                  "pattern": "*"}


def test_growth_over_baseline(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", """
baseline = "sizes.json"
[defaults]
size_pct = 10
""")
    code, out, _ = run(capsys, str(files["a"]), "--budget", str(budget), "--update-baseline")
    assert code == 0 and f"recorded in {tmp_path / 'sizes.json'}" in " ".join(out.split())
    stored = json.loads((tmp_path / "sizes.json").read_text())
    assert stored["a.tflite"]["bytes"] == 10_000
    files["a"].write_bytes(os.urandom(10_999))   # +9.99%: holds
    assert run(capsys, str(files["a"]), "--budget", str(budget))[0] == 0
    files["a"].write_bytes(os.urandom(11_001))   # +10.01%: fails
    code, out, _ = run(capsys, str(files["a"]), "--budget", str(budget), "--json")
    failed = [g for g in json.loads(out)["gates"] if not g["ok"]]
    assert code == 1 and [(g["gate"], g["figure"]) for g in failed][0] == ("regression", "size_bytes")
    assert (failed[0]["actual"], failed[0]["baseline"]) == (11_001, 10_000)
    assert failed[0]["limit"] == pytest.approx(11_000)
    assert "size_bytes 11,001 B vs 10,000 B in baseline (+10.0%), allowed 10%" in failed[0]["message"]
    # JUnit as qualify writes it: the growth gate is "regression FIGURE"
    assert run(capsys, str(files["a"]), "--budget", str(budget), "--junit", str(tmp_path / "j.xml"))[0] == 1
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert set(cases) == {"regression size_bytes", "regression zipped_bytes"}
    assert cases["regression size_bytes"].find("failure").get("type") == "Regression"


def test_growth_without_baseline_entry_is_skipped_not_passed_silently(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", '[defaults]\nsize_pct = 1\n'
                                              '[artifacts."b.tflite"]\nmax_size_bytes = 20_000\n')
    (tmp_path / "base.json").write_text('{"other.tflite": {"bytes": 1, "zipped_bytes": 1}}')
    code, out, _ = run(capsys, str(files["b"]), "--budget", str(budget), "--baseline",
                       str(tmp_path / "base.json"), "--json")
    assert code == 0   # measured by its size limit; its growth is shown as skipped
    gates = json.loads(out)["gates"]
    assert {g["skipped"] for g in gates if g["gate"] == "regression"} == {"no baseline"}
    # an artifact whose only limit is growth, unknown to the baseline, is not measured at all
    code, _, err = run(capsys, str(files["a"]), "--budget", str(budget), "--baseline",
                       str(tmp_path / "base.json"))
    assert code == 2 and "a.tflite is not measured by any budget" in err


def test_a_missing_baseline_file_is_an_error_not_a_silent_skip(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", 'baseline = "nowhere.json"\n'
                                              '[artifacts."*.tflite"]\nmax_size_bytes = 20_000\n'
                                              'size_pct = 5\n')
    code, _, err = run(capsys, str(files["a"]), "--budget", str(budget))
    assert code == 2 and "nowhere.json does not exist" in err and "--update-baseline" in err
    assert run(capsys, str(files["a"]), "--budget", str(budget), "--update-baseline")[0] == 0
    assert run(capsys, str(files["a"]), "--budget", str(budget))[0] == 0


def test_junit_names_with_control_characters_stay_valid_xml(tmp_path, capsys):
    odd = tmp_path / "bell\x07and\x1bescape.tflite"
    odd.write_bytes(os.urandom(100))
    budget = write(tmp_path / "budgets.toml", '[artifacts."*.tflite"]\nmax_size_bytes = 10\n')
    junit = tmp_path / "junit.xml"
    assert run(capsys, str(odd), "--budget", str(budget), "--junit", str(junit))[0] == 1
    case = next(ET.parse(junit).getroot().iter("testcase"))   # parses: the XML is valid
    assert case.get("classname") == "bell\\x07and\\x1bescape.tflite"


@pytest.mark.parametrize("make", ["folder", "file"])
def test_junit_and_baseline_never_replace_what_is_not_ours(files, tmp_path, capsys, make):
    budget = write(tmp_path / "budgets.toml", '[artifacts."*.tflite"]\nmax_size_bytes = 20_000\n')
    target = tmp_path / "precious"
    place_users_own(target, make, "my notes, not XML")
    code, _, err = run(capsys, str(files["a"]), "--budget", str(budget), "--junit", str(target))
    assert code == 2 and "precious" in err and "not a JUnit XML report" in err
    code, _, err = run(capsys, str(files["a"]), "--budget", str(budget), "--baseline",
                       str(target), "--update-baseline")
    assert code == 2 and "not a JSON file" in err
    assert (target / "keep.txt").read_text() == "my notes, not XML" if make == "folder" else \
        target.read_text() == "my notes, not XML"


def test_junit_has_one_testcase_per_artifact_and_check(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", '[artifacts."*.tflite"]\nmax_size_bytes = 9_999\nmax_zipped_bytes = 20_000\n')
    junit = tmp_path / "out" / "junit.xml"
    assert run(capsys, str(files["a"]), str(files["b"]), "--budget", str(budget), "--junit", str(junit))[0] == 1
    suite = ET.parse(junit).getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    assert set(cases) == {(n, k) for n in ("a.tflite", "b.tflite") for k in ("max_size_bytes", "max_zipped_bytes")}
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    assert cases[("a.tflite", "max_size_bytes")].find("failure") is not None
    assert cases[("a.tflite", "max_zipped_bytes")].find("failure") is None


@pytest.mark.parametrize("text, message", [
    ('[artifacts."*.tflite"]\nmax_size_byte = 1\n',
     "artifacts.\"*.tflite\".max_size_byte: unknown key; allowed keys are ['max_size_bytes', "
     "'max_zipped_bytes', 'size_pct']"),
    ('budget = 1\n', "budget: unknown key; allowed keys are ['artifacts', 'baseline', 'defaults']"),
    ('[artifacts."*.tflite"]\nmax_size_bytes = -1\n',
     "artifacts.\"*.tflite\".max_size_bytes: expected a number in [0, ∞], got -1"),
    ('[artifacts."*.tflite"]\nmax_size_bytes = 1.5\n',
     "artifacts.\"*.tflite\".max_size_bytes: expected a whole number of bytes, got 1.5"),
    ('[artifacts."*.tflite"]\nmax_size_bytes = "1"\n', "expected a finite number, got '1'"),
    ('[defaults]\nsize_pct = true\n', "defaults.size_pct: expected a finite number, got True"),
    ('[artifacts\n', "not valid TOML"),
    ('', "no budgets"),
    # the keys of the gate's own vocabulary before it took qualify's: refused with the new name
    ('[artifacts."*.tflite"]\nmax_bytes = 1\n',
     "artifacts.\"*.tflite\".max_bytes: now called max_size_bytes"),
    ('[defaults]\nmax_growth_pct = 5\n', "defaults.max_growth_pct: now called size_pct"),
])
def test_bad_budgets_file_is_a_usage_error(files, tmp_path, capsys, text, message):
    budget = write(tmp_path / "budgets.toml", text)
    code, _, err = run(capsys, str(files["a"]), "--budget", str(budget))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_budgets_speak_qualifys_vocabulary():
    from deepcompress.qualify._config import FORMAT_KEYS, REGRESSION_KEYS
    from deepcompress.size_gate import Limits

    assert set(Limits.__dataclass_fields__) == {*FORMAT_KEYS, "size_pct"}
    assert "size_pct" in REGRESSION_KEYS


def test_missing_or_unbudgeted_artifact_is_a_usage_error(files, tmp_path, capsys):
    budget = write(tmp_path / "budgets.toml", '[artifacts."*.tflite"]\nmax_size_bytes = 1_000_000\n')
    code, _, err = run(capsys, str(tmp_path / "gone.tflite"), "--budget", str(budget))
    assert code == 2 and "gone.tflite" in err
    code, _, err = run(capsys, str(files["pkg"]), "--budget", str(budget))
    assert code == 2 and "m.mlpackage matches no budget" in err
    assert run(capsys, str(files["a"]), "--budget", str(tmp_path / "none.toml"))[0] == 2


def test_shipped_example_budgets_file_parses():
    example = Path(__file__).resolve().parents[1] / "examples" / "budgets.toml"
    budgets = load_budgets(example)
    assert budgets.artifacts and budgets.baseline == example.parent / "size-baseline.json"


def test_shipped_example_baseline_exists_and_covers_the_budgeted_artifacts():
    example = Path(__file__).resolve().parents[1] / "examples" / "budgets.toml"
    budgets = load_budgets(example)
    sizes = json.loads(budgets.baseline.read_text())
    for name in sizes:
        assert budgets.for_artifact(Path(name))["max_size_bytes"] > sizes[name]["bytes"]


def test_links_inside_a_package_count_as_their_target_and_links_out_are_refused(files, tmp_path,
                                                                                  capsys):
    pkg = files["pkg"]
    (pkg / "Data" / "alias.bin").symlink_to("weight.bin")       # inside: counted as 3,000 bytes
    assert artifact_size(pkg).bytes == 6_200
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 50)
    (pkg / "Data" / "leak.bin").symlink_to(outside)
    budget = write(tmp_path / "budgets.toml", '[artifacts."*.mlpackage"]\nmax_size_bytes = 100_000\n')
    code, _, err = run(capsys, str(pkg), "--budget", str(budget))
    assert code == 2 and "leak.bin is a link to" in err and "outside the package" in err


def test_the_one_junit_writer_counts_times_and_escapes():
    from dccore.junit import Case, junit_xml

    root = ET.fromstring(junit_xml("suite\x1b", [
        Case("a", "passes", detail="actual 1"), Case("a", "fails", ok=False, message="1 > 0",
                                                     kind="SizeBudgetExceeded", detail="a: 1 > 0"),
        Case("b\x07", "undecided", skipped="no baseline", seconds=0.25)], seconds=1.5))
    assert (root.get("name"), root.get("tests"), root.get("failures"), root.get("skipped"),
            root.get("time")) == ("suite\\x1b", "3", "1", "1", "1.500")
    passes, fails, skipped = root.iter("testcase")
    assert passes.find("system-out").text == "actual 1" and passes.find("failure") is None
    failure = fails.find("failure")
    assert (failure.get("message"), failure.get("type"), failure.text) == \
        ("1 > 0", "SizeBudgetExceeded", "a: 1 > 0")
    assert skipped.get("classname") == "b\\x07" and skipped.get("time") == "0.250"
    assert skipped.find("skipped").get("message") == "no baseline"
