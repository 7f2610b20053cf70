"""Recipes: one TOML file describing data, model, baseline training and the ordered stages.

Every table becomes a frozen dataclass, validated when it is built: unknown keys, wrong types and
out-of-range values raise :class:`RecipeError` naming the field (``stages[1].bits``), what is allowed
and what was given. Stage settings are scoped like coremltools' optimisation configs: a global
value, overridden ``by_type`` (module class name), overridden ``by_name`` (qualified module name or
glob); name beats type beats global, and ``false`` means "leave this layer alone".

A recipe round-trips through :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`; the resolved form is
saved next to every checkpoint and artifact so each figure can be traced to what produced it.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from dccore.errors import RecipeError

# The checkout's recipes/ (editable installs), else where a wheel puts them (pyproject data-files).
RECIPES_DIR = next((d for d in (Path(__file__).resolve().parent.parent / "recipes",
                                Path(sys.prefix) / "share" / "deepcompress" / "recipes")
                    if d.is_dir()), Path(__file__).resolve().parent.parent / "recipes")
LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d")


# --------------------------------------------------------------------------------------------
# Small validation helpers: each names the field path in its error.

def _fail(path: str, allowed: str, got: Any) -> RecipeError:
    return RecipeError(f"{path}: expected {allowed}, got {got!r}")


def _int(path: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(path, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _fail(path, f"an integer in [{lo}, {hi if hi is not None else '∞'}]", v)
    return v


def _float(path: str, v: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(path, "a finite number", v)
    v = float(v)
    bad = ((lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise _fail(path, f"a number in {left}{lo}, {hi if hi is not None else '∞'}{right}", v)
    return v


def _choice(path: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise _fail(path, f"one of {list(choices)}", v)
    return v


def _str(path: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "a non-empty string", v)
    return v


def _table(path: str, v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail(path, "a table", v)
    return v


def _check_keys(path: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise RecipeError(f"{where}{unknown[0]}: unknown key; allowed keys are {sorted(allowed)}")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------------------------
# Sections

@dataclass(frozen=True)
class DataConfig:
    root: str | None = None          # None: --data flag, then $DEEPCOMPRESS_DATA, then Debian's folder
    train_limit: int | None = None   # keep the first N training examples (tests, smoke runs)
    test_limit: int | None = None
    batch_size: int = 128            # the paper's Caffe LeNet solvers use 64-128
    val_fraction: float = 0.0        # held out from train for saturation searches; 0 = none

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "data") -> "DataConfig":
        _check_keys(path, d, _field_names(cls))
        kw: dict[str, Any] = {}
        if d.get("root") is not None:
            kw["root"] = _str(f"{path}.root", d["root"])
        for k in ("train_limit", "test_limit"):
            if d.get(k) is not None:
                kw[k] = _int(f"{path}.{k}", d[k], 1)
        if "batch_size" in d:
            kw["batch_size"] = _int(f"{path}.batch_size", d["batch_size"], 1, 65536)
        if "val_fraction" in d:
            kw["val_fraction"] = _float(f"{path}.val_fraction", d["val_fraction"], 0.0, 0.5)
        return cls(**kw)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet300"                 # built-in name or "package.module:factory"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None             # a state_dict file: skips baseline training
    input_shape: tuple[int, ...] = (1, 28, 28)  # one example, no batch axis (exports need it)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "model") -> "ModelConfig":
        _check_keys(path, d, _field_names(cls))
        kw: dict[str, Any] = {}
        if "name" in d:
            kw["name"] = _str(f"{path}.name", d["name"])
        if "kwargs" in d:
            kw["kwargs"] = dict(_table(f"{path}.kwargs", d["kwargs"]))
        if d.get("weights") is not None:
            kw["weights"] = _str(f"{path}.weights", d["weights"])
        if "input_shape" in d:
            shape = d["input_shape"]
            if not isinstance(shape, (list, tuple)) or not shape:
                raise _fail(f"{path}.input_shape", "a list of positive integers", shape)
            kw["input_shape"] = tuple(_int(f"{path}.input_shape[{i}]", s, 1)
                                      for i, s in enumerate(shape))
        return cls(**kw)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20                 # LeNet-300-100 reaches ~89-90% on Fashion-MNIST in ~20
    lr: float = 1e-3                 # Adam's usual default
    optimizer: str = "adam"
    momentum: float = 0.9            # SGD only
    weight_decay: float = 0.0
    schedule: str = "cosine"         # cosine decay to 0 over the epochs; "constant" otherwise

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "sgd")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine", "constant")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "baseline") -> "TrainConfig":
        _check_keys(path, d, _field_names(cls))
        kw: dict[str, Any] = {}
        if "epochs" in d:
            kw["epochs"] = _int(f"{path}.epochs", d["epochs"], 0, 10000)
        if "lr" in d:
            kw["lr"] = _float(f"{path}.lr", d["lr"], 0.0, 10.0, lo_open=True)
        if "optimizer" in d:
            kw["optimizer"] = _choice(f"{path}.optimizer", d["optimizer"], cls.OPTIMIZERS)
        if "momentum" in d:
            kw["momentum"] = _float(f"{path}.momentum", d["momentum"], 0.0, 1.0, hi_open=True)
        if "weight_decay" in d:
            kw["weight_decay"] = _float(f"{path}.weight_decay", d["weight_decay"], 0.0, 1.0)
        if "schedule" in d:
            kw["schedule"] = _choice(f"{path}.schedule", d["schedule"], cls.SCHEDULES)
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Stages: each has a `kind`, global settings, and per-type / per-name overrides of LAYER_FIELDS.

@dataclass(frozen=True)
class StageConfig:
    """Base of all stage configs. Subclasses declare KIND and LAYER_FIELDS."""

    KIND: ClassVar[str] = ""
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
    name: str = ""   # checkpoint name; defaults to "<index>_<kind>"
    by_type: dict[str, Any] = field(default_factory=dict)   # type name -> {field: value} | False
    by_name: dict[str, Any] = field(default_factory=dict)   # module name/glob -> {...} | False

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str) -> "StageConfig":
        allowed = _field_names(cls) | {"kind"}
        _check_keys(path, d, allowed)
        kw = {k: v for k, v in d.items() if k not in ("kind", "by_type", "by_name", "name")}
        if "name" in d:
            kw["name"] = _str(f"{path}.name", d["name"])
        kw = cls._validate_fields(kw, path)
        kw["by_type"] = cls._overrides(d.get("by_type", {}), f"{path}.by_type", is_type=True)
        kw["by_name"] = cls._overrides(d.get("by_name", {}), f"{path}.by_name", is_type=False)
        return cls(**kw)

    @classmethod
    def _validate_fields(cls, kw: dict[str, Any], path: str) -> dict[str, Any]:
        """Validate (and normalise) global field values; subclasses implement."""
        return kw

    @classmethod
    def _overrides(cls, table: Any, path: str, *, is_type: bool) -> dict[str, Any]:
        table = _table(path, table)
        out: dict[str, Any] = {}
        for key, value in table.items():
            p = f"{path}.{key}"
            if is_type and key not in LAYER_TYPES:
                raise _fail(p.rsplit(".", 1)[0] + " key", f"a layer type in {list(LAYER_TYPES)}", key)
            if value is False:
                out[key] = False
                continue
            value = _table(p, value)
            _check_keys(p, value, set(cls.LAYER_FIELDS))
            out[key] = cls._validate_fields(dict(value), p)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.KIND}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name in ("by_type", "by_name") and not v) or (f.name == "name" and not v):
                continue
            d[f.name] = v
        return d

    # -- resolving per layer ---------------------------------------------------------------
    def defaults_for(self, type_name: str) -> dict[str, Any]:
        """Built-in per-type defaults (the paper's), below the recipe's global values."""
        return {}

    def for_layer(self, name: str, type_name: str) -> dict[str, Any] | None:
        """The settings for one layer, or None when the recipe leaves it alone."""
        settings = self.defaults_for(type_name)
        settings.update({f: getattr(self, f) for f in self.LAYER_FIELDS if getattr(self, f) is not None})
        type_over = self.by_type.get(type_name)
        if type_over is False:
            return None
        settings.update(type_over or {})
        name_over = self._name_override(name)
        if name_over is False:
            return None
        settings.update(name_over or {})
        return settings

    def _name_override(self, name: str) -> Any:
        if name in self.by_name:
            return self.by_name[name]
        for pattern, value in self.by_name.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return None

    def check_layer_names(self, layer_names: list[str], path: str) -> None:
        for pattern in self.by_name:
            if not any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in layer_names):
                raise RecipeError(f"{path}.by_name.{pattern}: matches no compressible layer; "
                                  f"the model's layers are {layer_names}")


def _validate_distill(kw: dict[str, Any], path: str) -> None:
    if "distill" in kw:
        kw["distill"] = _float(f"{path}.distill", kw["distill"], 0.0, 1.0)
    if "temperature" in kw:
        kw["temperature"] = _float(f"{path}.temperature", kw["temperature"], 0.0, 100.0, lo_open=True)


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """Magnitude pruning with retraining: threshold = quality x std(layer), or a target sparsity.

    With ``rounds`` > 1 the cut grows linearly to its target over the rounds, each followed by
    ``retrain_epochs`` of retraining with the mask enforced (iterative pruning beats one big cut).
    """

    KIND: ClassVar[str] = "prune"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("quality", "sparsity")
    quality: float | None = None       # the paper's quality parameter (x std of the layer)
    sparsity: float | None = None      # or: the fraction of the layer's weights to zero
    rounds: int = 3
    retrain_epochs: int = 2            # per round
    lr: float | None = None            # None: baseline lr / 10 (the paper's retraining rate)
    weight_decay: float = 0.0
    distill: float = 0.0               # weight of the dense baseline's soft targets in retraining
    temperature: float = 4.0           # softmax temperature of those soft targets

    @classmethod
    def _validate_fields(cls, kw: dict[str, Any], path: str) -> dict[str, Any]:
        _validate_distill(kw, path)
        if kw.get("quality") is not None:
            kw["quality"] = _float(f"{path}.quality", kw["quality"], 0.0, 10.0, lo_open=True)
        if kw.get("sparsity") is not None:
            kw["sparsity"] = _float(f"{path}.sparsity", kw["sparsity"], 0.0, 1.0, hi_open=True)
        if kw.get("quality") is not None and kw.get("sparsity") is not None:
            raise RecipeError(f"{path}: give either quality or sparsity, not both")
        if "rounds" in kw:
            kw["rounds"] = _int(f"{path}.rounds", kw["rounds"], 1, 100)
        if "retrain_epochs" in kw:
            kw["retrain_epochs"] = _int(f"{path}.retrain_epochs", kw["retrain_epochs"], 0, 1000)
        if kw.get("lr") is not None:
            kw["lr"] = _float(f"{path}.lr", kw["lr"], 0.0, 10.0, lo_open=True)
        if "weight_decay" in kw:
            kw["weight_decay"] = _float(f"{path}.weight_decay", kw["weight_decay"], 0.0, 1.0)
        return kw

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str) -> "PruneConfig":
        cfg = super().from_dict(d, path)
        if cfg.quality is None and cfg.sparsity is None:
            raise RecipeError(f"{path}: a prune stage needs quality (x std of each layer's weights) "
                              "or sparsity (fraction to zero); neither was given")
        return cfg  # type: ignore[return-value]


@dataclass(frozen=True)
class ShareConfig(StageConfig):
    """Per-layer 1-D k-means weight sharing of the surviving weights."""

    KIND: ClassVar[str] = "share"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "init")
    INITS: ClassVar[tuple[str, ...]] = ("linear", "density", "random")
    bits: int | None = None      # None: 8 for conv, 5 for fully connected (the paper's finding)
    init: str | None = None      # None: "linear" (keeps the rare large weights; the paper's best)
    iterations: int = 30

    @classmethod
    def _validate_fields(cls, kw: dict[str, Any], path: str) -> dict[str, Any]:
        if kw.get("bits") is not None:
            kw["bits"] = _int(f"{path}.bits", kw["bits"], 1, 16)
        if kw.get("init") is not None:
            kw["init"] = _choice(f"{path}.init", kw["init"], cls.INITS)
        if "iterations" in kw:
            kw["iterations"] = _int(f"{path}.iterations", kw["iterations"], 1, 10000)
        return kw

    def defaults_for(self, type_name: str) -> dict[str, Any]:
        return {"bits": 8 if type_name in CONV_TYPES else 5, "init": "linear"}


@dataclass(frozen=True)
class FinetuneCentroidsConfig(StageConfig):
    """Trained quantization: centroids move by the summed gradients of their weights."""

    KIND: ClassVar[str] = "finetune_centroids"
    epochs: int = 3
    lr: float | None = None      # None: baseline lr / 10
    distill: float = 0.0         # weight of the dense baseline's soft targets
    temperature: float = 4.0

    @classmethod
    def _validate_fields(cls, kw: dict[str, Any], path: str) -> dict[str, Any]:
        _validate_distill(kw, path)
        if "epochs" in kw:
            kw["epochs"] = _int(f"{path}.epochs", kw["epochs"], 0, 1000)
        if kw.get("lr") is not None:
            kw["lr"] = _float(f"{path}.lr", kw["lr"], 0.0, 10.0, lo_open=True)
        return kw


@dataclass(frozen=True)
class EncodeConfig(StageConfig):
    """Entropy coding into the `.dcz` container (the last stage)."""

    KIND: ClassVar[str] = "encode"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("index_bits",)
    CODERS: ClassVar[tuple[str, ...]] = ("huffman", "ans", "none")
    coder: str = "huffman"           # the paper's method; "ans" gets closer to the entropy bound
    index_bits: int | None = None    # gap width; None: the width that minimises the file
    plain_dtype: str = "float32"     # biases and other uncompressed tensors

    @classmethod
    def _validate_fields(cls, kw: dict[str, Any], path: str) -> dict[str, Any]:
        if "coder" in kw:
            kw["coder"] = _choice(f"{path}.coder", kw["coder"], cls.CODERS)
        if kw.get("index_bits") is not None:
            kw["index_bits"] = _int(f"{path}.index_bits", kw["index_bits"], 1, 16)
        if "plain_dtype" in kw:
            kw["plain_dtype"] = _choice(f"{path}.plain_dtype", kw["plain_dtype"], ("float32", "float16"))
        return kw


STAGE_TYPES: dict[str, type[StageConfig]] = {
    c.KIND: c for c in (PruneConfig, ShareConfig, FinetuneCentroidsConfig, EncodeConfig)
}


def register_stage_config(cls: type[StageConfig]) -> type[StageConfig]:
    """Add a stage kind (a new technique adds a config and a handler, and touches nothing else)."""
    STAGE_TYPES[cls.KIND] = cls
    return cls


def stage_from_dict(d: Any, path: str) -> StageConfig:
    d = _table(path, d)
    kind = d.get("kind")
    if kind not in STAGE_TYPES:
        raise _fail(f"{path}.kind", f"one of {sorted(STAGE_TYPES)}", kind)
    return STAGE_TYPES[kind].from_dict(d, path)


# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    stages: tuple[StageConfig, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str | None = None) -> "Recipe":
        _check_keys("", d, _field_names(cls))
        stages_raw = d.get("stages", [])
        if not isinstance(stages_raw, list):
            raise _fail("stages", "an array of tables ([[stages]])", stages_raw)
        stages = tuple(stage_from_dict(s, f"stages[{i}]") for i, s in enumerate(stages_raw))
        stages = tuple(s if s.name else dataclasses.replace(s, name=f"{i + 1}_{s.KIND}")
                       for i, s in enumerate(stages))
        recipe = cls(
            name=_str("name", d.get("name", name or "recipe")),
            seed=_int("seed", d.get("seed", 0), 0, 2**32 - 1),
            data=DataConfig.from_dict(_table("data", d.get("data", {}))),
            model=ModelConfig.from_dict(_table("model", d.get("model", {}))),
            baseline=TrainConfig.from_dict(_table("baseline", d.get("baseline", {}))),
            stages=stages,
        )
        recipe._check_order()
        return recipe

    def _check_order(self) -> None:
        kinds = [s.KIND for s in self.stages]
        names = [s.name for s in self.stages]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise RecipeError(f"stages: two stages are named {dup!r}; names must be unique "
                              "(they name the checkpoints)")
        for i, kind in enumerate(kinds):
            before = kinds[:i]
            if kind == "prune" and "share" in before:
                raise RecipeError(f"stages[{i}].kind: 'prune' after 'share' is not allowed: pruning "
                                  "must come before weight sharing (the paper's order)")
            if kind == "finetune_centroids" and "share" not in before:
                raise RecipeError(f"stages[{i}].kind: 'finetune_centroids' needs a 'share' stage "
                                  "before it (there are no centroids to fine-tune yet)")
            if kind == "encode" and i != len(kinds) - 1:
                raise RecipeError(f"stages[{i}].kind: 'encode' must be the last stage")

    def to_dict(self) -> dict[str, Any]:
        def clean(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                if isinstance(obj, StageConfig):
                    return clean(obj.to_dict())
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if getattr(obj, f.name) is not None}
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            return obj
        return clean(self)

    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def check_against_model(self, layer_types: dict[str, str]) -> None:
        """Reject by_name overrides that match none of the model's compressible layers."""
        names = list(layer_types)
        for i, stage in enumerate(self.stages):
            stage.check_layer_names(names, f"stages[{i}]")

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name or s.KIND == name:
                return i
        raise RecipeError(f"--resume-from {name!r}: no such stage; this recipe's stages are "
                          f"{[s.name for s in self.stages]}")


def resolve_recipe_path(spec: str | Path) -> Path:
    """A path to a TOML file, or the name of a shipped recipe (``lenet300``)."""
    p = Path(spec)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise RecipeError(f"recipe file {p} does not exist")
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
    saves as recipe.toml is the text it parsed even if the file changes meanwhile."""
    path = resolve_recipe_path(spec)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not a text file ({exc})") from exc
    if edit is not None:
        edit(data)
    try:
        return Recipe.from_dict(data, name=path.stem), text
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
