"""Accuracy on device: the first N test examples go to the device, its outputs come back, and are
compared with the labels and with the same artifact run on the host."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dccore import children
from dccore.errors import DeviceError

from .._device import Device
from ._driver import push_cached, remote_path, run_litert


@dataclass(frozen=True)
class EvalData:
    """Labelled examples to score an artifact on, from the caller (the harness reads no dataset):
    ``inputs`` float32 with a batch axis, ``labels`` int64, one per example."""

    inputs: np.ndarray
    labels: np.ndarray
    source: str = "caller"

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.labels.shape[0] or self.labels.ndim != 1:
            raise DeviceError(f"eval data: {self.inputs.shape[0]} inputs for "
                              f"{self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def host_tflite_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    """The artifact's outputs on the host, through ai_edge_litert: the reference for the device."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise DeviceError("host reference outputs need ai_edge_litert: pip install ai-edge-litert") from exc
    from ._litert_runner import run_batch

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    return run_batch(interpreter, x)


def compare(device_out: np.ndarray, labels: np.ndarray, host_out: np.ndarray | None) -> dict:
    """Accuracy against the labels; max |difference| and argmax agreement against the host."""
    if device_out.shape[0] != labels.shape[0]:
        raise DeviceError(f"the device returned {device_out.shape[0]} outputs for {labels.shape[0]} "
                          "examples; the eval run was cut short")
    pred = device_out.reshape(len(labels), -1).argmax(axis=1)
    report = {"examples": int(len(labels)), "accuracy": float((pred == labels).mean())}
    if host_out is not None:
        host = host_out.reshape(device_out.shape)
        report.update(host_accuracy=float((host.reshape(len(labels), -1).argmax(1) == labels).mean()),
                      max_abs_diff_vs_host=float(np.abs(device_out - host).max()) if host.size else 0.0,
                      argmax_agreement=float((host.reshape(len(labels), -1).argmax(1) == pred).mean()))
    return report


def tflite_accuracy(device: Device, python: str, model_local: Path, model_remote: str, *,
                    data: EvalData, threads: int, timeout_s: float) -> dict:
    """Run ``data`` through the artifact on ``device`` and score it."""
    x, labels = data.inputs.astype(np.float32), data.labels.astype(np.int64)
    with children.temporary_folder("eval") as tmp:   # reaped later if this process is killed
        batch = Path(tmp) / "eval_input.npy"
        np.save(batch, x, allow_pickle=False)
        remote_in = push_cached(device, batch, "eval_input", timeout_s=timeout_s)
        remote_out = remote_path(device, "out", f"eval_output-{Path(remote_in).stem.split('-')[-1]}.npy")
        device.shell(["mkdir", "-p", remote_path(device, "out")], timeout_s=timeout_s)
        run_litert(device, python, model_remote, runs=0, warmup=0, threads=threads,
                   timeout_s=timeout_s, eval_remote=(remote_in, remote_out))
        local_out = Path(tmp) / "eval_output.npy"
        device.pull(remote_out, local_out, timeout_s=timeout_s)
        device_out = np.load(local_out, allow_pickle=False)
    report = compare(device_out, labels, host_tflite_outputs(model_local, x))
    report["data"] = data.source
    return report
