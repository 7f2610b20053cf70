"""The stage registry, the base of every stage config, and the order check.

A stage is one file: a config dataclass deriving :class:`StageConfig` (its ``KIND`` is the
recipe's ``kind``), a handler ``run(model, config, ctx)``, the invariant it guarantees
(``ensures(model, config, ctx)``, checked by the pipeline right after the handler) and its order
rules (what it ``provides`` to later stages, what it ``requires`` before it, what it ``forbids``
before it, whether it must be ``last``). The file registers a :class:`Stage` with
:func:`register_stage`; the recipe, the order check and the pipeline find it in :data:`STAGES`
by kind.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

from dccore.errors import RecipeError
from dccore.registry import Registry

from ..models import LAYER_TYPES  # noqa: F401 (re-exported: the types by_type may name)
from dccore.config import (FREE, Check, Config, Text, UnknownKey, check_values, fail, setting,
                       table)

CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
              "ConvTranspose3d")
# each weight matrix of these is a layer of its own, "rnn.weight_hh_l0" (compression.models)
RNN_TYPES = ("LSTM", "GRU", "RNN")
BUILTIN_STAGES = tuple(f"compression.stages.{m}" for m in ("prune", "share", "finetune", "encode",
                                                           "shrink", "transfer", "projection"))


def _empty(value: Any) -> bool:
    return not value


# --------------------------------------------------------------------------------------------
# Per-layer scoping: a global value, overridden by_type, overridden by_name.

@dataclass(frozen=True)
class _LayerSettings(Check):
    """One by_type / by_name entry: only the stage's LAYER_FIELDS, each checked as the global."""

    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> Any:
        if value is False:
            return False
        settings = check_values(owner, table(path, value), path, names=owner.LAYER_FIELDS)
        owner._check_layer(settings, path)
        return settings

    def child(self, key: str, data: Any, owner: type) -> Any:
        if key not in owner.LAYER_FIELDS:
            raise UnknownKey(key, owner.LAYER_FIELDS)
        return owner.__dataclass_fields__[key].metadata["check"]


@dataclass(frozen=True)
class Overrides(Check):
    """``by_type`` (keys: layer types) or ``by_name`` (keys: module names or globs): each entry
    is a table of the stage's per-layer fields, or ``false`` to leave those layers alone."""

    types: tuple[str, ...] | None = None
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, entry in table(path, value).items():
            if self.types is not None and key not in self.types:
                raise fail(f"{path} key", f"a layer type in {list(self.types)}", key)
            out[key] = _LayerSettings()(f"{path}.{key}", entry, owner)
        return out

    def child(self, key: str, data: Any, owner: type) -> Any:
        if self.types is not None and key not in self.types:
            raise UnknownKey(key, self.types)
        return _LayerSettings()


@dataclass(frozen=True)
class StageConfig(Config):
    """Base of all stage configs. Subclasses declare KIND and LAYER_FIELDS."""

    KIND: ClassVar[str] = ""
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
    name: str = setting("", Text(), omit=_empty)   # checkpoint name; defaults to "<index>_<kind>"
    by_type: dict[str, Any] = setting(check=Overrides(LAYER_TYPES), factory=dict, omit=_empty)
    by_name: dict[str, Any] = setting(check=Overrides(), factory=dict, omit=_empty)

    @classmethod
    def _check_layer(cls, settings: Mapping[str, Any], path: str) -> None:
        """Rules across the per-layer fields, for the global values and each override."""

    def _check(self, path: str) -> None:
        self._check_layer({f: getattr(self, f) for f in self.LAYER_FIELDS}, path)

    # -- resolving per layer ---------------------------------------------------------------
    def defaults_for(self, type_name: str) -> dict[str, Any]:
        """Built-in per-type defaults (the paper's), below the recipe's global values."""
        return {}

    def for_layer(self, name: str, type_name: str) -> dict[str, Any] | None:
        """The settings for one layer, or None when the recipe leaves it alone."""
        settings = self.defaults_for(type_name)
        settings.update({f: getattr(self, f) for f in self.LAYER_FIELDS
                         if getattr(self, f) is not None})
        type_over = self.by_type.get(type_name)
        name_over = self._name_override(name)
        if name_over is False or (type_over is False and not name_over):
            return None     # name beats type: a named layer is chosen even if its type is off
        settings.update(type_over or {})
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


# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """A registered stage kind: its config type, handler, contract and place in the order."""

    config: type[StageConfig]
    run: Callable[[Any, Any, Any], None]           # run(model, config, ctx)
    # ensures(model, config, ctx): raise ModelError when the stage's promise does not hold. The
    # pipeline calls it after the handler, besides the state's own check (masked weights are 0,
    # shared layers hold <= 2**bits values).
    ensures: Callable[[Any, Any, Any], None] | None = None
    provides: frozenset[str] = frozenset()         # what later stages may rely on ("centroids")
    requires: Mapping[str, str] = field(default_factory=dict)  # needed before it -> why
    forbids: Mapping[str, str] = field(default_factory=dict)   # must not exist before it -> why
    last: bool = False
    # the row of the paper's per-stage size table this stage ends ("pruning + sharing"): the
    # pipeline writes that row's file from the last such stage's checkpoint
    size_row: str | None = None
    # "train": changes the model, evaluated and checkpointed after it; "output": writes the
    # final file from the finished model (after the report's figures are known)
    phase: str = "train"
    # report(config, its metrics, the finished report) -> sections to add to report.json, once
    # the file's size is known (projection: the shipped model's bits next to the trainer's)
    report: Callable[[Any, dict, dict], dict] | None = None
    # schedule(config) -> what the stage does inside a user's own training loop
    # (compression.api.Compressor), in order: an int leaves that many epochs to the user's loop,
    # a callable(loop) runs at that point (loop: the Compressor, with .model, .context() and
    # .train_centroids(on)). None: the stage runs whole, at once (post-training stages)
    schedule: Callable[[Any], Iterable[int | Callable[[Any], None]]] | None = None

    PHASES: ClassVar[tuple[str, ...]] = ("train", "output")

    @property
    def kind(self) -> str:
        return self.config.KIND

    def apply(self, model: Any, config: StageConfig, ctx: Any) -> None:
        """The handler, then the invariants: the state's (every stage's, checked here once
        rather than in each handler) and the stage's own promise."""
        self.run(model, config, ctx)
        ctx.state.check()
        if self.ensures is not None:
            self.ensures(model, config, ctx)


STAGES: Registry[Stage] = Registry("stage", builtins=BUILTIN_STAGES)


def register_stage(stage: Stage) -> Stage:
    """Add a stage kind: a new technique is one file that calls this, and touches nothing else."""
    if not (isinstance(stage.config, type) and issubclass(stage.config, StageConfig)
            and stage.config.KIND):
        raise ValueError(f"{stage.config!r}: a stage's config derives StageConfig and sets KIND")
    if stage.phase not in Stage.PHASES:
        raise ValueError(f"stage {stage.kind!r}: phase must be one of {Stage.PHASES}")
    STAGES.register(stage.kind, stage)
    return stage


def stage_from_dict(data: Any, path: str) -> StageConfig:
    data = table(path, data)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in STAGES:
        raise fail(f"{path}.kind", f"one of {sorted(STAGES.names())}", kind)
    return STAGES.get(kind).config.from_dict(data, path)


class StageList(Check):
    """The recipe's ``[[stages]]``: each built by the config its ``kind`` registered; a stage
    without a name is called ``<position>_<kind>``."""

    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> tuple[StageConfig, ...]:
        if not isinstance(value, list):
            raise fail(path, "an array of tables ([[stages]])", value)
        stages = (stage_from_dict(s, f"{path}[{i}]") for i, s in enumerate(value))
        return tuple(s if s.name else dataclasses.replace(s, name=f"{i + 1}_{s.KIND}")
                     for i, s in enumerate(stages))

    def child(self, key: str, data: Any, owner: type) -> Any:
        if not (key.isdigit() and isinstance(data, list) and int(key) < len(data)):
            return FREE     # the editor reports the missing item
        item = data[int(key)]
        kind = item.get("kind") if isinstance(item, Mapping) else None
        return STAGES.get(kind).config if isinstance(kind, str) and kind in STAGES else FREE


def check_order(stages: tuple[StageConfig, ...]) -> None:
    """Unique names, and each stage's declared order rules."""
    names = [s.name for s in stages]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise RecipeError(f"stages: two stages are named {dup!r}; names must be unique "
                          "(they name the checkpoints)")
    provided: dict[str, str] = {}      # capability -> the kind that provided it first
    for i, config in enumerate(stages):
        stage, where = STAGES.get(config.KIND), f"stages[{i}].kind: {config.KIND!r}"
        for capability, why in stage.forbids.items():
            if capability in provided:
                raise RecipeError(f"{where} after {provided[capability]!r} is not allowed: {why}")
        for capability, why in stage.requires.items():
            if capability not in provided:
                givers = " or ".join(repr(k) for k, s in STAGES.items() if capability in s.provides)
                raise RecipeError(f"{where} needs a {givers or repr(capability)} stage before it "
                                  f"({why})")
        if stage.last and i != len(stages) - 1:
            raise RecipeError(f"{where} must be the last stage")
        for capability in stage.provides:
            provided.setdefault(capability, config.KIND)
