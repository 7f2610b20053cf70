"""The three phases a qualification (and each nightly model) goes through: compress, export,
bench. Each reuses what an earlier run left when nothing it depends on changed.

- **compress**: a recipe runs into ``RUN_DIR`` (compression.pipeline: checkpoints after every
  stage, ``recipe.json`` with the resolved recipe's sha256, ``report.json`` last). A finished
  run of the same recipe (same sha256) is reused as it is; a run of a recipe that differs only
  in later stages, or that was interrupted, resumes from the first stage that changed (or has no
  checkpoint). A ready ``.dcz`` is used as given.
- **export**: each format through the exporters' registry (``export_and_validate``). An
  artifact is reused when its inputs (the .dcz's sha256, the format, its options, the examples)
  are those recorded beside it in ``exports.json`` and its own sha256 is the one recorded.
- **bench**: every artifact that runs on a device (a .tflite on the host and ADB devices, a
  .mlpackage on simulators) through ``device_harness``; a device that fails is a failed result,
  not an exception.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dccore.artifacts import artifact_sha256, artifact_size
from dccore.errors import UsageError
from dccore.outputs import JSON_FILE, read_json_object, write_json_atomic

from ._config import BenchSpec, ExportSpec, ModelSpec
from ._metric import Measured, Metric, primary_metric
from ._provenance import UNKNOWN

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# compress

@dataclass
class WorkPlan:
    """What to compress, checked before any work: the recipe is read and validated."""

    spec: ModelSpec
    recipe: Any = None            # compression.recipe.Recipe
    recipe_text: str | None = None

    @property
    def recipe_sha256(self) -> str:
        return self.recipe.sha256() if self.recipe is not None else UNKNOWN


def plan(spec: ModelSpec) -> WorkPlan:
    if spec.dcz is not None:
        if not spec.dcz.is_file():
            raise UsageError(f"model.dcz = {spec.dcz}: no such file")
        return WorkPlan(spec)
    from compression.recipe import read_recipe

    from ..runs import apply_override

    def edit(data: dict[str, Any]) -> None:
        for assignment in spec.set:
            apply_override(data, assignment)
        if spec.data is not None:
            data.setdefault("data", {})["root"] = spec.data

    recipe, text = read_recipe(spec.recipe, edit)
    return WorkPlan(spec, recipe, text)


@dataclass
class Compressed:
    dcz: Path
    recipe_sha256: str
    metric: Metric | None
    model: str | None                # the factory to rebuild it with (None: the file's own)
    model_kwargs: dict[str, Any] | None
    report: dict[str, Any] | None = None
    run_dir: Path | None = None
    how: str = "given"               # "given" | "reused" | "resumed from STAGE" | "compressed"
    seconds: float = 0.0
    data_root: str | None = None     # the IDX folder its examples come from (None: the default)
    claimed: Metric | None = None    # a given .dcz's own figures: shown, never gated on


def compress(p: WorkPlan, run_dir: Path, *, progress: Any = None, log: Log = lambda m: None) -> Compressed:
    start = time.perf_counter()
    if p.recipe is None:
        return _given(p, start)
    from compression import pipeline

    from ..runs import check_run_folder

    recipe = p.recipe
    resume = _resume_point(run_dir, recipe)
    if resume == "reuse":
        log(f"compress: reusing the finished run in {run_dir} (recipe sha256 {recipe.sha256()[:12]})")
        report = pipeline.read_report(run_dir)     # its model.dcz is the one it describes
        how = "reused"
    else:
        check_run_folder(run_dir, force=True, resuming=resume is not None)
        log(f"compress: recipe {recipe.name} " +
            (f"resuming from {resume}" if resume else "from the start") + f" into {run_dir}")
        kwargs = {"progress": progress} if progress is not None else {}
        result = pipeline.run_recipe(recipe, run_dir, recipe_text=p.recipe_text, resume_from=resume,
                                     log=log, **kwargs)
        report = result.report
        how = f"resumed from {resume}" if resume else "compressed"
    return Compressed(dcz=run_dir / "model.dcz", recipe_sha256=recipe.sha256(),
                      metric=primary_metric(report, str(run_dir / "report.json")),
                      model=recipe.model.name, model_kwargs=dict(recipe.model.kwargs),
                      report=report, run_dir=run_dir, how=how,
                      seconds=time.perf_counter() - start, data_root=recipe.data.root)


def _given(p: WorkPlan, start: float) -> Compressed:
    import dcz as container

    meta = container.load(p.spec.dcz).meta
    try:
        claimed = primary_metric(meta, str(p.spec.dcz))
    except UsageError:
        claimed = None     # the file claims nothing; its metric is measured either way
    sha = meta.get("recipe_sha256") if isinstance(meta.get("recipe_sha256"), str) else UNKNOWN
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    root = p.spec.data or (data.get("root") if isinstance(data.get("root"), str) else None)
    return Compressed(dcz=p.spec.dcz, recipe_sha256=sha, metric=None, model=p.spec.factory,
                      model_kwargs=dict(p.spec.kwargs) if p.spec.factory else None,
                      seconds=time.perf_counter() - start, data_root=root, claimed=claimed)


def _resume_point(run_dir: Path, recipe: Any) -> str | None:
    """``"reuse"`` for a finished run of this very recipe, else the stage the pipeline can resume
    the folder from (``pipeline.resume_point``), or None to start afresh."""
    from compression import pipeline

    from ..runs import finished_run

    if finished_run(run_dir, recipe.sha256()) is not None:
        return "reuse"
    return pipeline.resume_point(run_dir, recipe)


# ----------------------------------------------------------------------------------------------
# export

@dataclass
class Exported:
    format: str
    path: Path
    sha256: str
    bytes: int
    zipped_bytes: int
    ok: bool
    result: dict[str, Any]           # what `deepcompress export --json` reports for the format
                                     # (deepcompress.exporting.export_format)
    cached: bool = False


@dataclass
class Exports:
    artifacts: dict[str, Exported] = field(default_factory=dict)   # "dcz", then each format
    examples: dict[str, Any] = field(default_factory=dict)         # where the examples came from
    measured: dict[str, Measured] = field(default_factory=dict)    # the metric of each format
    metric: Metric | None = None     # for the report: the .dcz's measured figure as ``final``,
                                     # the run's baseline and stages beside it
    seconds: float = 0.0


def export_all(spec: ExportSpec, compressed: Compressed, out_dir: Path, *,
               log: Log = lambda m: None) -> Exports:
    """The .dcz as an artifact, and each format exported, validated and measured (or reused)."""
    from exporters import EXPORTERS

    from ..exporting import export_format

    start = time.perf_counter()
    dcz_sha = artifact_sha256(compressed.dcz)
    size = artifact_size(compressed.dcz)
    out = Exports()
    out.artifacts["dcz"] = Exported("dcz", compressed.dcz, dcz_sha, size.bytes, size.zipped_bytes,
                                    True, {"bytes": size.bytes, "zipped_bytes": size.zipped_bytes})
    cache_path = out_dir / "exports.json"
    cache = (read_json_object(cache_path) if JSON_FILE.owns(cache_path) else None) or {}
    paths = {}
    for name in spec.formats:
        exporter = EXPORTERS.get(name)
        paths[name] = exporter.check_output(out_dir / f"model{exporter.suffix}",
                                            flag=f"{exporter.label} artifact")
    keys = {name: _export_key(spec, name, dcz_sha) for name in spec.formats}
    todo = [n for n in spec.formats if not _cached(cache.get(n), keys[n], paths[n])]
    loaded = None

    def step(text: str) -> contextlib.AbstractContextManager[None]:
        log(f"export: {text}")
        return contextlib.nullcontext()

    for name in spec.formats:
        if name not in todo:
            entry = cache[name]
            log(f"export: {name} reused ({paths[name].name}, sha256 {entry['sha256'][:12]})")
            out.artifacts[name] = _exported(name, paths[name], entry["sha256"], entry["result"], True)
            out.examples = entry.get("examples", {})
            continue
        if loaded is None:
            loaded = _load_for_export(spec, compressed)
        exporter = EXPORTERS.get(name)
        result = export_format(loaded, exporter, paths[name],
                               exporter.Options(**spec.options.get(name, {})),
                               baseline=spec.dense, step=step)
        sha = artifact_sha256(paths[name])
        out.examples = loaded.examples.describe
        cache[name] = {"key": keys[name], "sha256": sha, "result": result,
                       "examples": out.examples}
        write_json_atomic(cache_path, cache, kind=JSON_FILE)
        out.artifacts[name] = _exported(name, paths[name], sha, result, False)
    out.measured = measure_metric(compressed, out, loaded or (lambda: _load_for_export(spec, compressed)))
    out.metric = _report_metric(compressed.metric, out.measured.get("dcz"))
    out.seconds = time.perf_counter() - start
    return out


def _exported(name: str, path: Path, sha: str, result: dict, cached: bool) -> Exported:
    return Exported(name, path, sha, int(result["bytes"]), int(result["zipped_bytes"]),
                    bool(result.get("ok")), result, cached)


def _export_key(spec: ExportSpec, name: str, dcz_sha: str) -> str:
    inputs = artifact_sha256(spec.inputs) if spec.inputs is not None and spec.inputs.is_file() else None
    blob = json.dumps({"dcz": dcz_sha, "format": name, "options": spec.options.get(name, {}),
                       "examples": spec.examples, "inputs": inputs, "dense": spec.dense},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cached(entry: Any, key: str, path: Path) -> bool:
    if not isinstance(entry, dict) or entry.get("key") != key or not path.exists():
        return False
    try:
        return entry.get("sha256") == artifact_sha256(path)
    except OSError:
        return False


def _load_for_export(spec: ExportSpec, compressed: Compressed):
    """The model rebuilt from the .dcz, its compressed layers, the examples and their scorer:
    what ``deepcompress export`` loads (``deepcompress.exporting.load``)."""
    from ..exporting import load

    return load(compressed.dcz, model=compressed.model, model_kwargs=compressed.model_kwargs,
                inputs=spec.inputs, data=compressed.data_root, limit=spec.examples)


def _runtime(fmt: str) -> str:
    """What ran an artifact of format ``fmt`` at validation (the decoded .dcz: PyTorch)."""
    from exporters import EXPORTERS

    return "model.dcz decoded, in PyTorch" if fmt == "dcz" else f"{EXPORTERS.get(fmt).label} on this host"


def measure_metric(compressed: Compressed, out: Exports, loaded: Any) -> dict[str, Measured]:
    """The task's metric of every shipped format, through what ships, on the examples (see
    :class:`Measured`). With labels: the accuracy of the decoded .dcz (PyTorch) and of each
    artifact (its runtime, at validation). Without: a recipe run's own measurement of the
    decoded file on the task's test split; an artifact is then held to the decoded model's
    outputs (``export_valid``), its task metric not measured. ``loaded``: ``_load_for_export``'s
    result, or a callable that loads it when no cached validation has the .dcz's figure."""
    source = out.examples.get("source", "the examples")
    results = {name: e.result for name, e in out.artifacts.items() if name != "dcz"}
    n = next((_scored(r)["examples"] for r in results.values() if "examples" in _scored(r)), None)
    labelled = any("torch_accuracy" in _scored(r) for r in results.values())
    dcz_value = next((float(_scored(r)["torch_accuracy"]) for r in results.values()
                      if "torch_accuracy" in _scored(r)), None)
    if dcz_value is None and not any("min_cosine" in _scored(r) for r in results.values()):
        loaded = loaded() if callable(loaded) else loaded
        if loaded.examples.labels is not None:
            from dccore.metrics import accuracy

            labelled, dcz_value = True, accuracy(loaded.reference, loaded.examples.labels)
        n = len(loaded.examples)
    on = f"{n or 'the'} examples of {source}"
    measured: dict[str, Measured] = {}
    if labelled:
        measured["dcz"] = Measured("dcz", "accuracy", dcz_value, on=f"{on}, {_runtime('dcz')}")
    else:
        measured["dcz"] = _recipe_measured(compressed)
    name, better = measured["dcz"].name, measured["dcz"].higher_is_better
    for fmt, r in results.items():
        scored = _scored(r)
        if "accuracy" in scored:
            measured[fmt] = Measured(fmt, "accuracy", float(scored["accuracy"]),
                                     on=f"{on}, {_runtime(fmt)}")
        elif isinstance(scored.get("skipped"), str):
            measured[fmt] = Measured(fmt, name, None, better, note=f"not measured: {scored['skipped']}")
        else:
            measured[fmt] = Measured(fmt, name, None, better, note=(
                "not measured: the examples have no labels (the artifact is held to the decoded "
                "model's outputs: export_valid)"))
    return measured


def _scored(result: dict[str, Any]) -> dict[str, Any]:
    """An export's scored figures: its own, or Core ML's predictions reported beside its verdict."""
    predictions = result.get("predictions")
    return predictions if isinstance(predictions, dict) else result


def _recipe_measured(compressed: Compressed) -> Measured:
    """Without labelled examples: a recipe run's figure of its decoded model.dcz, measured by
    the pipeline on the task's test split (a report that predates that is not used)."""
    report = compressed.report or {}
    metric = compressed.metric
    table = report.get("primary_metric") if isinstance(report.get("primary_metric"), dict) else {}
    if metric is None or metric.final is None or not table.get("final_measured_on"):
        why = ("the examples have no labels and the file's own figures are claims" if compressed.run_dir is None
               else "the run's report predates measuring the decoded file; compress again")
        return Measured("dcz", metric.name if metric else "accuracy", None,
                        metric.higher_is_better if metric else True, note=f"not measured: {why}")
    return Measured("dcz", metric.name, metric.final, metric.higher_is_better,
                    on=f"the task's test split ({report.get('test_examples', '?')} examples), "
                       f"{table['final_measured_on']}, at compress")


def _report_metric(run: Metric | None, dcz: Measured | None) -> Metric | None:
    """The metric the report draws: the .dcz's measured figure as ``final``, and the run's
    baseline and stages beside it when they are the same metric."""
    if dcz is None or dcz.value is None:
        return None
    if run is None or run.name != dcz.name:
        return Metric(dcz.name, dcz.value, higher_is_better=dcz.higher_is_better)
    return Metric(run.name, dcz.value, run.baseline, run.higher_is_better, run.stages)


def check_metric_examples(spec: ModelSpec, export: ExportSpec, min_metric: float | None,
                          where: str = "[budgets]") -> None:
    """A metric gate needs examples to measure the metric on (checked before any work). A
    recipe run measures its decoded file on the task's test split; a ready .dcz needs labelled
    examples: the IDX test set (the default) or an inputs file with 'labels'."""
    if min_metric is None or spec.dcz is None or export.inputs is None:
        return
    from ..examples import read_named

    if "labels" not in read_named(export.inputs):
        raise UsageError(
            f"{where} min_metric = {min_metric:g}: nothing to measure {spec.dcz.name}'s metric on "
            f"([export] inputs = {export.inputs} has no 'labels'); add the labels to that file, or "
            "drop inputs to use the IDX test set ([model] data = DIR). The file's own figures are "
            "claims and never gate")


# ----------------------------------------------------------------------------------------------
# bench

def bench_options(spec: BenchSpec, *, eval_data: Any = None):
    from device_harness.runners import BenchOptions

    return BenchOptions(runs=spec.runs, warmup=spec.warmup, threads=spec.threads,
                        timeout_s=spec.timeout_s, benchmark_model=spec.benchmark_model,
                        delegate=spec.delegate, eval_data=eval_data,
                        cooldown_max_s=spec.cooldown_max_s, retries=spec.retries)


def eval_data(spec: BenchSpec, compressed: Compressed, exports: Exports):
    """The first ``bench.eval`` labelled test examples, for accuracy on the device (IDX data
    only: a label-free model is scored against PyTorch at export, not on the device)."""
    if not spec.eval or not str(exports.examples.get("source", "")).startswith("IDX"):
        return None
    from ..examples import eval_data as idx_eval_data

    return idx_eval_data(spec.eval, data=compressed.data_root,
                         input_shape=exports.examples.get("input_shape"))


def artifacts_for(spec: str, exports: Exports) -> list[Exported]:
    """The artifacts a device runs (as the harness's artifact kinds record it)."""
    from device_harness import formats_for

    runs = formats_for(spec)
    return [e for name, e in exports.artifacts.items() if name in runs]


def bench_device(spec: str, artifacts: list[Exported], bench: BenchSpec, *, data: Any = None,
                 on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Every artifact on one device, one at a time; failures come back as results."""
    from device_harness.runners import bench_many

    return bench_many([a.path for a in artifacts], [spec], bench_options(bench, eval_data=data),
                      on_result=on_result)
