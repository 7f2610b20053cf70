"""Recipes: one TOML file describing data, model, baseline training and the ordered stages.

Every table becomes a frozen config dataclass, built and checked by one generic function
(``dccore/config.py``) from what each field declares: unknown keys, wrong types and
out-of-range values raise :class:`RecipeError` naming the field (``stages[1].bits``), what is
allowed and what was given. Each ``[[stages]]`` table is built by the config its ``kind``
registered (``compression/stages/``). Stage settings are scoped like coremltools' optimisation
configs: a global value, overridden ``by_type`` (module class name), overridden ``by_name``
(qualified module name or glob); name beats type beats global, and ``false`` means "leave this
layer alone".

A recipe round-trips through :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`; the resolved form is
saved next to every checkpoint and artifact so each figure can be traced to what produced it.
Recipes carry a schema ``version`` (1 when absent); a newer one is refused.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from dccore import tomlfile
from dccore.errors import RecipeError

from dccore.config import (Check, Config, FreeTable, Int, Num, OneOf, Section, Shape, Text, lookup,
                      setting)
from .tasks import TaskConfig, TaskSection, default_task_config
from .stages import StageConfig, StageList, check_order
from .targets import ExportConfig, check_targets

# The checkout's recipes/ (editable installs), else where a wheel puts them (pyproject data-files).
RECIPES_DIR = next((d for d in (Path(__file__).resolve().parent.parent / "recipes",
                                Path(sys.prefix) / "share" / "deepcompress" / "recipes")
                    if d.is_dir()), Path(__file__).resolve().parent.parent / "recipes")
RECIPE_VERSION = 1          # the schema this code reads; a missing `version` means 1

# Limits, checked before anything is built (dccore.tomlfile's, the same for every config file,
# and the stage count): the shipped recipes are ~2 KB, nest 4 levels and hold 4 stages; anything
# far beyond is a mistake or an attack, and would otherwise train and be copied into every report
# and .dcz file.
MAX_STAGES = 100


def check_limits(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuse data nested too deep, strings too long, tables or arrays too large."""
    tomlfile.check_limits(value, path, depth, error=RecipeError, root="recipe")


class Version(Check):
    """The recipe schema version: 1..RECIPE_VERSION; a newer one is refused, saying why."""

    def __call__(self, path: str, value: Any, owner: type) -> int:
        value = Int(1)(path, value, owner)
        if value > RECIPE_VERSION:
            raise RecipeError(f"{path}: this recipe is schema version {value}, newer than this "
                              f"deepcompress reads (up to {RECIPE_VERSION}); upgrade deepcompress")
        return value


# --------------------------------------------------------------------------------------------
# Sections

@dataclass(frozen=True)
class DataConfig(Config):
    # None: --data flag, then $DEEPCOMPRESS_DATA, then Debian's folder
    root: str | None = setting(None, Text())
    # keep the first N training examples (tests, smoke runs)
    train_limit: int | None = setting(None, Int(1))
    test_limit: int | None = setting(None, Int(1))
    batch_size: int = setting(128, Int(1, 65536))   # the paper's Caffe LeNet solvers use 64-128
    # held out of training (seeded) and scored after each stage; 0: none, train on everything
    val_fraction: float = setting(0.0, Num(0.0, 0.5))


@dataclass(frozen=True)
class ModelConfig(Config):
    name: str = setting("lenet300", Text())            # built-in name or "package.module:factory"
    kwargs: dict[str, Any] = setting(check=FreeTable(), factory=dict)
    weights: str | None = setting(None, Text())        # a state_dict file: skips baseline training
    # one example, no batch axis (exports need it)
    input_shape: tuple[int, ...] = setting((1, 28, 28), Shape())


@dataclass(frozen=True)
class TrainConfig(Config):
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "sgd")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine", "constant")

    # LeNet-300-100 reaches ~89-90% on Fashion-MNIST in ~20
    epochs: int = setting(20, Int(0, 10000))
    lr: float = setting(1e-3, Num(0.0, 10.0, lo_open=True))   # Adam's usual default
    optimizer: str = setting("adam", OneOf(OPTIMIZERS))
    momentum: float = setting(0.9, Num(0.0, 1.0, hi_open=True))   # SGD only
    weight_decay: float = setting(0.0, Num(0.0, 1.0))
    # cosine decay to 0 over the epochs; "constant" otherwise
    schedule: str = setting("cosine", OneOf(SCHEDULES))


# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe(Config):
    # 1 is implied, so it is not written out: v1 recipes keep the hash (and .dcz bytes) they had
    version: int = setting(RECIPE_VERSION, Version(), omit=lambda v: v == 1)
    name: str = setting("recipe", Text())
    seed: int = setting(0, Int(0, 2**32 - 1))
    data: DataConfig = setting(check=Section(DataConfig), factory=DataConfig)
    model: ModelConfig = setting(check=Section(ModelConfig), factory=ModelConfig)
    baseline: TrainConfig = setting(check=Section(TrainConfig), factory=TrainConfig)
    stages: tuple[StageConfig, ...] = setting(check=StageList(), factory=tuple)
    # what the model is for: its data, loss and metric (compression/tasks/); the default, IDX
    # image classification, is not written out, so older recipes keep their hash
    task: TaskConfig = setting(check=TaskSection(), factory=default_task_config,
                               omit=lambda t: t == default_task_config())
    # the artifact formats it is for: each layer's codebook width is checked against what they
    # store before any work (compression/targets.py); none by default, and then not written out
    export: ExportConfig = setting(check=Section(ExportConfig), factory=ExportConfig,
                                   omit=lambda e: e == ExportConfig())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "", name: str | None = None) -> "Recipe":
        """Build a recipe; ``name`` (a file's stem) is its name when ``d`` gives none."""
        check_limits(d)
        if isinstance(d, Mapping):
            Version()("version", d.get("version", RECIPE_VERSION), cls)  # before any other key
            stages = d.get("stages")
            if isinstance(stages, list) and len(stages) > MAX_STAGES:
                raise RecipeError(f"stages: {len(stages)} stages; at most {MAX_STAGES} are allowed")
            if name is not None and "name" not in d:
                d = {**d, "name": name}
        return super().from_dict(d, path)

    def _check(self, path: str) -> None:
        check_order(self.stages)

    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def check_against_model(self, layer_types: dict[str, str]) -> list[str]:
        """Reject by_name overrides that match none of the model's compressible layers, and
        codebook widths the ``[export] targets`` do not store; returns the notes on the widths
        padded (``pad_bits``), for the run to print."""
        names = list(layer_types)
        for i, stage in enumerate(self.stages):
            stage.check_layer_names(names, f"stages[{i}]")
        return check_targets(self.export, self.stages, layer_types)

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name or s.KIND == name:
                return i
        raise RecipeError(f"--resume-from {name!r}: no such stage; this recipe's stages are "
                          f"{[s.name for s in self.stages]}")


def check_override(data: Mapping[str, Any], key: str, value: Any) -> None:
    """Check one edit (``--set key=value``) of a parsed recipe before it is made: the key path
    must exist in the schema, and a single value must pass its field's check. RecipeError
    says which key is unknown, where, and what is allowed there."""
    parts = key.split(".")
    check_limits(value, key, len(parts))
    check = lookup(Recipe, parts, data)
    if check is not None and not check.has_children:
        check(key, value, Recipe)


def resolve_recipe_path(spec: str | Path) -> Path:
    """A path to a TOML file, or the name of a shipped recipe (``lenet300``)."""
    p = Path(spec)
    if p.suffix == ".toml" or p.exists():
        if p.is_dir():
            raise RecipeError(f"{p} is a folder, not a recipe file: give the recipe's .toml file "
                              "or a shipped recipe's name")
        if not p.exists():
            raise RecipeError(f"recipe file {p} does not exist")
        if not p.is_file():
            raise RecipeError(f"{p} is not a regular file; a recipe is a .toml file")
        return p
    shipped = RECIPES_DIR / f"{spec}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(q.stem for q in RECIPES_DIR.glob("*.toml")) if RECIPES_DIR.is_dir() else []
    raise RecipeError(f"recipe {spec!r} is neither a file nor a shipped recipe; shipped: {names}")


def load_recipe(spec: str | Path,
                edit: Callable[[dict[str, Any]], None] | None = None) -> Recipe:
    """Read a recipe file (or shipped name); ``edit`` may change the parsed dict first
    (the CLI's ``--set`` overrides)."""
    return read_recipe(spec, edit)[0]


def read_recipe(spec: str | Path, edit: Callable[[dict[str, Any]], None] | None = None
                ) -> tuple[Recipe, str]:
    """load_recipe, also returning the file's text: the file is read once, so the text a run
    saves as recipe.toml is the text it parsed even if the file changes meanwhile.

    Errors in the file name the file; errors ``edit`` raises are its own (they name the flag)."""
    path = resolve_recipe_path(spec)
    data, text = tomlfile.read(path, "recipe", error=RecipeError)
    if edit is not None:
        edit(data)
    try:
        return Recipe.from_dict(data, name=path.stem), text
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
