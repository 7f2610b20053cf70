"""Runners: what runs a model on a device and how its output becomes figures.

- ``_benchmark_model``: TFLite's benchmark_model command line and stdout parser;
- ``_litert_runner``: the self-contained script pushed to devices that have Python;
- ``_driver``: pushing (cached by content hash) and running those on a Device;
- ``_benchhost``: the iOS BenchHost app protocol (Core ML on simulators);
- ``_accuracy``: accuracy on device against labels and host outputs;
- ``_stats``: latency statistics, thermal status and cool-down;
- ``_bench``: one artifact on one device, and many on many with retries.
"""
from ._accuracy import EvalData
from ._bench import (MAX_RETRIES, MAX_RUNS, MAX_SECONDS, MAX_THREADS, BenchOptions, bench_artifact,
                     bench_many, formats_run_by)
from ._benchhost import COMPUTE_UNITS
from ._driver import executable_problem
from ._benchmark_model import DELEGATES, BenchmarkModelCommand, BenchmarkModelOutput, parse_output
from ._stats import latency_stats

__all__ = ["MAX_RETRIES", "MAX_RUNS", "MAX_SECONDS", "MAX_THREADS", "BenchOptions", "COMPUTE_UNITS",
           "DELEGATES", "EvalData", "bench_artifact", "executable_problem", "formats_run_by",
           "bench_many", "BenchmarkModelCommand", "BenchmarkModelOutput", "parse_output",
           "latency_stats"]
