"""Issue 19, second hardening round: output folders are taken only when they carry our marker,
configs name code only outside the standard library, benchmark_model is a program, every config
reader shares the recipe reader's limits, and names fit the history before any work."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from dccore.errors import BudgetError, DeepCompressError, ModelError, RecipeError, UsageError
from deepcompress.cli import main
from deepcompress.qualify._work import compress as REAL_COMPRESS


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """A command that gets past its checks fails at once instead of training (these tests are
    about what is refused before any work)."""
    import compression.pipeline
    import compression.tuning
    import deepcompress.qualify._work

    def work(*args, **kwargs):
        raise AssertionError("the command started work")

    monkeypatch.setattr(compression.pipeline, "run_recipe", work)
    monkeypatch.setattr(compression.tuning, "sensitivity", work)
    monkeypatch.setattr(compression.tuning, "autotune", work)
    monkeypatch.setattr(deepcompress.qualify._work, "compress", work)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and its bytes (None: a folder): 'untouched' means equal."""
    out: dict[str, bytes | None] = {".": None}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def user_folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def refused(capsys, argv: list[str], folder: Path) -> str:
    before = snapshot(folder)
    assert main(argv) == 2
    assert snapshot(folder) == before, "a refused folder must be left byte for byte"
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# -- items 1 and 2: a folder is ours only when it carries our marker ------------------------------

RUN_LIKE = {"recipe.json": '{"recipe": {}, "sha256": "x"}', "notes.txt": "my notes"}


def test_run_refuses_a_folder_of_user_files_that_holds_a_recipe_json(tmp_path, capsys):
    mine = user_folder(tmp_path / "mine", RUN_LIKE)
    err = refused(capsys, ["run", "lenet300", "--out", str(mine), "--quiet"], mine)
    assert "no deepcompress marker" in err
    refused(capsys, ["run", "lenet300", "--out", str(mine), "--force", "--quiet"], mine)
    refused(capsys, ["run", "lenet300", "--out", str(mine), "--resume-from", "2_share"], mine)


@pytest.mark.parametrize("files", [
    {"sweep.json": '{"points": []}', "sweep.png": "my picture", "notes.txt": "mine"},  # no subfolders
    {"T8_d10_h0/recipe.json": "{}", "T8_d10_h0/notes.txt": "mine"},   # subfolders with recipe.json
    {"notes.txt": "mine"},
])
def test_sweep_refuses_a_folder_of_user_files(tmp_path, capsys, files):
    mine = user_folder(tmp_path / "mine", files)
    err = refused(capsys, ["sweep", "--out", str(mine), "--T", "8", "--quiet"], mine)
    assert "no deepcompress marker" in err


@pytest.mark.parametrize("command, files", [
    ("sensitivity", {"sensitivity.json": "{}", "notes.txt": "mine"}),
    ("sensitivity", {"baseline/recipe.json": "{}"}),
    ("autotune", {"autotune.json": "{}"}),
    ("autotune", {"sensitivity/sensitivity.json": "{}", "notes.txt": "mine"}),
])
def test_sensitivity_and_autotune_refuse_a_folder_of_user_files(tmp_path, capsys, command, files):
    mine = user_folder(tmp_path / "mine", files)
    extra = ["--budget", "0.5pt"] if command == "autotune" else []
    err = refused(capsys, [command, "--out", str(mine), *extra, "--quiet"], mine)
    assert "no deepcompress marker" in err


def test_qualify_refuses_a_fake_marker_and_a_run_folder_that_is_not_ours(tmp_path, capsys):
    from deepcompress.qualify._config import load_qualify_config  # noqa: F401 (imports cheaply)

    config = tmp_path / "q.toml"
    config.write_text('name = "q"\n[model]\nrecipe = "lenet300"\n[bench]\ndevices = ["host"]\n'
                      '[budgets]\nmax_size_bytes = 100000\n')
    fake = user_folder(tmp_path / "fake", {".deepcompress-qualify": "a folder of mine"})
    refused(capsys, ["qualify", str(config), "--out", str(fake)], fake)
    # our qualify folder, with a run/ that the user filled
    from dccore.outputs import claim_folder

    ours = tmp_path / "ours"
    claim_folder(ours, "qualify")
    user_folder(ours, {"run/recipe.json": '{"recipe": {}, "sha256": "x"}', "run/a.txt": "mine"})
    err = refused(capsys, ["qualify", str(config), "--out", str(ours)], ours)
    assert "run" in err and "no deepcompress marker" in err


def test_a_folder_of_another_command_is_refused_by_name(tmp_path, capsys):
    from dccore.outputs import claim_folder

    sweep = tmp_path / "sweep"
    claim_folder(sweep, "sweep")
    (sweep / "sweep.json").write_text("{}")
    err = refused(capsys, ["run", "lenet300", "--out", str(sweep), "--quiet"], sweep)
    assert "'deepcompress sweep' wrote" in err


def test_a_marker_that_is_a_link_or_not_ours_does_not_make_a_folder_ours(tmp_path):
    from dccore.outputs import FOLDER_MARKER, check_folder

    real = tmp_path / "real.json"
    real.write_text(json.dumps({"written_by": "deepcompress", "command": "run", "run_id": "1"}))
    linked = user_folder(tmp_path / "linked", {"notes.txt": "mine"})
    (linked / FOLDER_MARKER).symlink_to(real)
    other = user_folder(tmp_path / "other", {"notes.txt": "mine",
                                             FOLDER_MARKER: '{"command": "run", "run_id": "1"}'})
    for folder in (linked, other):
        with pytest.raises(UsageError, match="no deepcompress marker"):
            check_folder(folder, "run")


def test_empty_and_new_folders_are_taken_and_marked_and_a_marked_run_resumes(tmp_path, monkeypatch):
    from dccore.outputs import check_folder, folder_mark
    from deepcompress.runs import check_run_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    new = tmp_path / "a" / "b" / "new"
    for folder in (empty, new):
        assert check_folder(folder, "run") is None
        check_run_folder(folder, force=False, resuming=False)
        mark = folder_mark(folder)
        assert mark is not None and mark.command == "run" and len(mark.run_id) == 32
        (folder / "recipe.json").write_text("{}")          # the run started, then was killed
        check_run_folder(folder, force=False, resuming=True)  # resumable
        assert folder_mark(folder) == mark                     # the run keeps its identity
        (folder / "report.json").write_text("{}")
        with pytest.raises(UsageError, match="holds a finished run"):
            check_run_folder(folder, force=False, resuming=False)
        check_run_folder(folder, force=True, resuming=False)
        assert not (folder / "report.json").exists()


def _finished_old_run(folder: Path, model_bytes: bytes, report_sha: str | None = None) -> Path:
    """A finished run folder as deepcompress wrote it before folders carried a marker."""
    folder.mkdir()
    (folder / "recipe.json").write_text('{"recipe": {"name": "x"}, "sha256": "abc"}')
    (folder / "model.dcz").write_bytes(model_bytes)
    sha = report_sha or hashlib.sha256(model_bytes).hexdigest()
    (folder / "report.json").write_text(json.dumps({"model_sha256": sha, "recipe_sha256": "abc"}))
    return folder


def test_a_finished_run_from_before_markers_is_recognised_by_its_model_hash(tmp_path, capsys,
                                                                          monkeypatch):
    import compression.pipeline as pipeline
    from dccore.outputs import folder_mark

    old = _finished_old_run(tmp_path / "old", b"\x89DCZ\r\n\x1a\n model")
    refused(capsys, ["run", "lenet300", "--out", str(old), "--quiet"], old)  # finished: --force
    monkeypatch.setattr(pipeline, "run_recipe", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert main(["run", "lenet300", "--out", str(old), "--force", "--quiet"]) == 130
    assert folder_mark(old).command == "run" and not (old / "report.json").exists()
    capsys.readouterr()
    # the same layout whose report does not name the model beside it is the user's
    fake = _finished_old_run(tmp_path / "fake", b"model", report_sha="0" * 64)
    refused(capsys, ["run", "lenet300", "--out", str(fake), "--force", "--quiet"], fake)


# -- item 3: configs are code, data files are not --------------------------------------------------

@pytest.mark.parametrize("spec", ["os:system", "subprocess:run", "builtins:exec", "os.path:join",
                                  "this:x", "_io:open"])
def test_a_factory_in_the_standard_library_is_refused_before_import(spec, tmp_path, capsys):
    from compression.models import build_model

    sys.modules.pop("this", None)
    with pytest.raises(ModelError, match="standard library"):
        build_model(spec, {"command": f"touch {tmp_path / 'pwned'}"})
    assert not (tmp_path / "pwned").exists()
    assert "this" not in sys.modules and capsys.readouterr().out == ""   # `import this` prints


def test_a_qualify_config_naming_os_system_runs_nothing(tmp_path, capsys, monkeypatch):
    import deepcompress.qualify._work as work

    monkeypatch.setattr(work, "compress", REAL_COMPRESS)   # this test needs the factory called
    pwned = tmp_path / "pwned"
    from conftest import pack_shared_lenet300

    pack_shared_lenet300(tmp_path / "m.dcz", {"fc1.weight": (0.9, 4)},
                         {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]}})
    config = tmp_path / "q.toml"
    config.write_text(f'name = "q"\n[model]\ndcz = "m.dcz"\nfactory = "os:system"\n'
                      f'kwargs = {{command = "touch {pwned}"}}\n[bench]\ndevices = ["host"]\n'
                      '[budgets]\nmax_size_bytes = 100000\n')
    code = main(["qualify", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    assert code != 0 and not pwned.exists()
    assert "standard library" in capsys.readouterr().err


def test_help_says_recipes_and_configs_are_code(capsys):
    for command in ("run", "qualify", "nightly", "sweep", "autotune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "are code" in text and "never choose code" in text, command


def _program(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_benchmark_model_must_be_an_executable_regular_file(tmp_path):
    from device_harness.runners._driver import executable_problem

    elf = _program(tmp_path / "elf", b"\x7fELF\x02\x01\x01" + bytes(64))
    script = _program(tmp_path / "script", b"#!/system/bin/sh\necho\n")
    assert executable_problem(elf) is None and executable_problem(script) is None
    link = tmp_path / "link"
    link.symlink_to(elf)
    assert executable_problem(link) is None           # a link to a program is that program
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    cases = {Path("/dev/zero"): "not a regular file", zero: "not a regular file",
             tmp_path: "not a regular file", tmp_path / "none": "No such file",
             _program(tmp_path / "noexec", b"\x7fELF" + bytes(8), 0o644): "not executable",
             _program(tmp_path / "model.tflite", b"\x00\x00\x00\x00TFL3"): "neither an ELF"}
    for path, why in cases.items():
        assert why in (executable_problem(path) or ""), path


def test_a_qualify_config_whose_benchmark_model_is_not_a_program_is_refused(tmp_path, capsys):
    from deepcompress.qualify._config import load_qualify_config

    config = tmp_path / "q.toml"
    for target in ("/dev/zero", "q.toml"):
        config.write_text(f'name = "q"\n[model]\nrecipe = "lenet300"\n[bench]\ndevices = ["host"]\n'
                          f'benchmark_model = "{target}"\n[budgets]\nmax_size_bytes = 100000\n')
        with pytest.raises(UsageError, match="bench.benchmark_model"):
            load_qualify_config(config)


def test_the_driver_refuses_to_push_what_is_not_a_program(tmp_path):
    from dccore.errors import DeviceError
    from device_harness.runners._driver import run_benchmark_model

    class NoDevice:   # nothing may reach the device
        def __getattr__(self, name):
            raise AssertionError(f"the device was used ({name})")

    with pytest.raises(DeviceError, match="not executable"):
        run_benchmark_model(NoDevice(), _program(tmp_path / "bm", b"\x7fELF", 0o600), "/m",
                            runs=1, warmup=0, threads=1, delegate="default", timeout_s=1)


# -- item 8: every config reader has the recipe reader's limits ------------------------------------

DEEP = ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        "[" + ".".join(["a"] * 5000) + "]\nx = 1", "a = " + "[" * 17 + "]" * 17,
        "x = '" + "y" * 5000 + "'"]


def _readers(tmp_path: Path):
    from compression.recipe import load_recipe
    from deepcompress.size_gate import load_budgets
    from deepcompress.qualify._config import load_matrix, load_qualify_config

    return {"recipe": (load_recipe, RecipeError), "qualify config": (load_qualify_config, UsageError),
            "nightly matrix": (load_matrix, UsageError), "budgets": (load_budgets, BudgetError)}


@pytest.mark.parametrize("text", DEEP, ids=["arrays", "inline-tables", "dotted", "depth17", "long"])
def test_every_config_reader_refuses_deep_or_long_toml_with_its_own_error(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    for what, (read, error) in _readers(tmp_path).items():
        with pytest.raises(error) as err:
            read(path)
        assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1, what


def test_every_config_reader_refuses_big_and_special_files_without_reading_them(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for what, (read, error) in _readers(tmp_path).items():
        for path, why in ((big, "larger than 1024 KiB"), (fifo, "not a regular file"),
                          (Path("/dev/zero"), "")):
            with pytest.raises(DeepCompressError, match=why):
                read(path)


@pytest.mark.parametrize("command", ["qualify", "nightly"])
def test_deep_toml_is_a_usage_error_on_the_command_line(tmp_path, capsys, command):
    path = tmp_path / "c.toml"
    path.write_text(DEEP[0])
    out = tmp_path / "out"
    assert main([command, str(path), "--out", str(out)]) == 2
    assert "nested too deeply" in capsys.readouterr().err and not out.exists()


# -- item 9: stored fields fit the history, checked before any work --------------------------------

def test_names_longer_than_the_history_keeps_are_refused_naming_the_field(tmp_path, capsys):
    from deepcompress.qualify._config import load_matrix, load_qualify_config

    long = "n" * 201
    config = tmp_path / "q.toml"
    config.write_text(f'name = "{long}"\n[model]\nrecipe = "lenet300"\n[bench]\n'
                      'devices = ["host"]\n[budgets]\nmax_size_bytes = 100000\n')
    with pytest.raises(UsageError, match=r"name = .*201 characters.*at most 200"):
        load_qualify_config(config)
    out = tmp_path / "out"
    assert main(["qualify", str(config), "--out", str(out)]) == 2 and not out.exists()
    assert "201 characters" in capsys.readouterr().err
    stem = tmp_path / (long + ".toml")   # no name: the file's stem is stored
    stem.write_text(config.read_text().replace(f'name = "{long}"\n', ""))
    with pytest.raises(UsageError, match="201 characters"):
        load_qualify_config(stem)

    def matrix(name: str = "n", model: str = "m", slot: str = "host") -> Path:
        path = tmp_path / "n.toml"
        path.write_text(f'name = "{name}"\n[devices]\n{slot} = "host"\n[[models]]\n'
                        f'name = "{model}"\nmodel = {{recipe = "lenet300"}}\n')
        return path

    load_matrix(matrix())
    for kwargs, field in (({"name": long}, "name"), ({"model": long}, r"models\[0\]\.name"),
                          ({"slot": "s" * 65}, "device slot"),
                          ({"name": "n" * 200, "model": "m" * 200}, "key of its cell")):
        with pytest.raises(UsageError, match=field):
            load_matrix(matrix(**kwargs))


# -- what the config fuzzer (bench/bench_fuzz_configs.py) found ------------------------------------

def test_a_target_that_is_not_a_string_is_a_recipe_error(tmp_path):
    from compression.recipe import load_recipe

    for targets in ("[[]]", '[["coreml"]]', "[{}]"):
        path = tmp_path / "r.toml"
        path.write_text(f"[export]\ntargets = {targets}\n")
        with pytest.raises(RecipeError, match=r"export\.targets\[0\]"):
            load_recipe(path)


def test_a_path_naming_an_unknown_users_home_is_taken_as_written(tmp_path):
    from deepcompress.qualify._config import load_qualify_config

    config = tmp_path / "q.toml"
    config.write_text('[model]\ndcz = "~nosuchuser-h1a/m.dcz"\nfactory = "lenet300"\n'
                      '[bench]\ndevices = ["host"]\n[budgets]\nmax_size_bytes = 1\n')
    loaded = load_qualify_config(config)   # RuntimeError from expanduser before
    assert loaded.model.dcz == tmp_path / "~nosuchuser-h1a" / "m.dcz"


def test_a_dotted_key_of_thousands_of_parts_is_refused_before_the_parser_spends_seconds(
        tmp_path, monkeypatch):
    from dccore import tomlfile

    text = "[" + ".".join(["t"] * 20_000) + "]\nx = 1\n" + "y = " + " . ".join(['"q"'] * 100)

    def parser_reached(*args, **kwargs):   # tomllib took 13 s on the fuzzer's 42 KB input
        raise AssertionError("the file reached the parser")

    with monkeypatch.context() as m:
        m.setattr(tomlfile.tomllib, "loads", parser_reached)
        with pytest.raises(UsageError, match="dotted key of more than 64 parts"):
            tomlfile.loads(text, "c.toml")
    prose = 'd = "' + "Pruned. Shared. Coded, then sized. " * 100 + '"\na.b.c = 1\n'
    assert tomlfile.loads(prose, "c.toml")["a"] == {"b": {"c": 1}}
