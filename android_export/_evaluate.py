"""Run a ``.tflite`` in the LiteRT interpreter: accuracy against PyTorch, and latency."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dccore.errors import ExportError
from exporters import Evaluation, score_logits

from ._backend import quiet, require


def interpreter(path: str | os.PathLike[str], threads: int = 1, xnnpack: bool = True) -> Any:
    """A LiteRT interpreter, tensors allocated: with the default delegates (XNNPACK on CPU, as an
    app gets them), or with TFLite's builtin kernels only (``xnnpack=False``)."""
    litert = require("ai_edge_litert.interpreter")
    if not Path(path).is_file():
        raise ExportError(f"TFLite model {path} does not exist")
    resolver = (litert.OpResolverType.AUTO if xnnpack
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with quiet():
        it = litert.Interpreter(model_path=str(path), num_threads=threads,
                                experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    return it


def tflite_logits(path: str | os.PathLike[str], images: torch.Tensor) -> np.ndarray:
    it = interpreter(path)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    x = images.numpy().astype(np.float32)
    if tuple(inp["shape"][1:]) != x.shape[1:]:
        raise ExportError(f"{path}: input shape {list(inp['shape'])} does not fit examples of "
                          f"shape {list(x.shape[1:])}")
    logits = np.empty((x.shape[0], int(out["shape"][-1])), dtype=np.float32)
    for i in range(x.shape[0]):   # exported with batch 1, as an app calls it
        it.set_tensor(inp["index"], x[i:i + 1])
        it.invoke()
        logits[i] = it.get_tensor(out["index"])[0]
    return logits


@torch.no_grad()
def torch_logits(model: nn.Module, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """The PyTorch model's outputs in eval mode, in batches (the reference a .tflite must match)."""
    model.eval()
    outs = [model(images[i:i + batch]) for i in range(0, images.shape[0], batch)]
    return torch.cat(outs).numpy() if outs else np.empty((0,), dtype=np.float32)


def evaluate_tflite(path: str | os.PathLike[str], model: nn.Module, images: torch.Tensor,
                    labels: np.ndarray, reference: np.ndarray | None = None) -> Evaluation:
    """Accuracy of the .tflite on ``images`` next to the PyTorch model's, and the largest logit
    difference. ``reference`` reuses PyTorch logits computed earlier for the same images."""
    ref = torch_logits(model, images) if reference is None else reference
    return score_logits(tflite_logits(path, images), ref, np.asarray(labels))


def timing_interpreter(path: str | os.PathLike[str], threads: int = 1, xnnpack: bool = True,
                       warmup: int = 20) -> Any:
    """An interpreter ready to time: its input (shape from the model) holds a fixed random
    example, and it has been invoked ``warmup`` times."""
    it = interpreter(path, threads, xnnpack)
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.random.default_rng(0).random(inp["shape"], dtype=np.float32))
    for _ in range(warmup):
        it.invoke()
    return it


def invoke_times_us(it: Any, runs: int) -> list[float]:
    """Wall time of each of ``runs`` single invocations, in microseconds."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        it.invoke()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return times


def latency_summary(times: list[float]) -> dict[str, float]:
    """Median and the 10th/90th percentiles of invocation times (us)."""
    q = statistics.quantiles(times, n=10)
    return {"median_us": statistics.median(times), "p10_us": q[0], "p90_us": q[-1]}


def latency_us(path: str | os.PathLike[str], runs: int = 200, warmup: int = 20,
               threads: int = 1, xnnpack: bool = True) -> dict[str, float]:
    """Median (and spread) of ``runs`` single-example invocations after ``warmup`` ones."""
    it = timing_interpreter(path, threads, xnnpack, warmup)
    return {**latency_summary(invoke_times_us(it, runs)),
            "runs": runs, "warmup": warmup, "threads": threads, "xnnpack": xnnpack}
