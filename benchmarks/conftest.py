"""Benchmark plumbing: every case records its timing under a (group, implementation) pair; at the end
of the session the ratios of each group (reference / vsr_fast, measured in this same run) are printed
and written as JSON with the device, torch version and git SHA (docs/design.md, "Benchmarks").

The JSON goes to $VSR_FAST_BENCH_SUMMARY, default .benchmarks/vsr_fast_summary.json.
"""

import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

_RESULTS = defaultdict(dict)  # group -> impl -> {"median_ms", "min_ms", "peak_mb"}
_VALUES = defaultdict(dict)  # group -> impl -> a measured value (not a time)


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _git_sha():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def run_case(benchmark):
    """run_case(group, impl, fn, device, bytes_moved=None): time fn (synchronised on CUDA) and
    record it; bytes_moved (the least memory traffic the work needs) gives an achieved bandwidth."""

    def run(group, impl, fn, device, rounds=None, bytes_moved=None):
        def timed():
            fn()
            sync(device)

        # Warm-up: compilation, caches, and the allocator. On the VM this project runs on, a process's
        # first touches of fresh heap memory are slow (benchmarks/results/cpu_design_measurements.md),
        # so warm up for at least half a second, not a fixed count.
        start, calls = time.perf_counter(), 0
        while calls < 3 or (time.perf_counter() - start < 0.5 and calls < 200):
            timed()
            calls += 1
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, device=_device_name(device))
        benchmark.pedantic(
            timed, rounds=rounds or (30 if device.type == "cuda" else 10), iterations=1, warmup_rounds=1
        )
        stats = benchmark.stats.stats
        _RESULTS[group][impl] = {
            "median_ms": stats.median * 1e3,
            "min_ms": stats.min * 1e3,
            "peak_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None),
            "device": _device_name(device),
            "gb_per_s": bytes_moved / stats.median / 1e9 if bytes_moved else None,
        }

    return run


@pytest.fixture
def run_interleaved(benchmark):
    """run_interleaved(group, impls, device, rounds, frames=None): time several implementations
    ({name: fn}) in turns, one call of each per round in an order that rotates from round to round,
    so that a machine whose speed drifts within minutes slows them alike; each one's median over the
    rounds is recorded as run_case would. pytest-benchmark's own table shows whole rounds (all the
    implementations once). frames: per-frame times are printed as well."""

    def run(group, impls, device, rounds, frames=None):
        names = list(impls)
        times = {name: [] for name in names}
        for name in names:  # warm-up: compilation, weight packing, the allocator's first touches
            impls[name]()
            sync(device)
        turn = iter(range(rounds + 1))

        def one_round():
            shift = next(turn) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                impls[name]()
                sync(device)
                times[name].append(time.perf_counter() - start)

        benchmark.group = f"{group} (one round: {', '.join(names)})"
        benchmark.extra_info.update(device=_device_name(device), impls=names)
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
        for name, samples in times.items():
            samples.sort()
            median = samples[len(samples) // 2]
            _RESULTS[group][name] = {
                "median_ms": median * 1e3,
                "min_ms": samples[0] * 1e3,
                "peak_mb": None,
                "device": _device_name(device),
                "gb_per_s": None,
                "ms_per_frame": median * 1e3 / frames if frames else None,
                "rounds_ms": [round(s * 1e3, 1) for s in samples],
            }
            benchmark.extra_info[f"{name}_median_ms"] = median * 1e3

    return run


@pytest.fixture
def record_value(benchmark):
    """record_value(group, impl, value): a measured quantity that is not a time (e.g. peak memory);
    printed beside the ratios. Uses the benchmark fixture so that --benchmark-only keeps the test."""

    def record(group, impl, value):
        # the benchmark fixture may run once per test (and may already have, for a timing)
        if not getattr(benchmark, "_mode", None):
            benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        _VALUES[group][impl] = value

    return record


def pytest_sessionfinish(session, exitstatus):
    if not _RESULTS and not _VALUES:
        return
    lines = [
        "",
        "vsr_fast benchmark ratios (median time of the other implementation / vsr_fast's, same run):",
    ]
    for group in sorted(_RESULTS):
        impls = _RESULTS[group]
        base = impls.get("vsr_fast")
        parts = []
        for impl, r in sorted(impls.items()):
            ratio = f" = {r['median_ms'] / base['median_ms']:.2f}x" if base and impl != "vsr_fast" else ""
            mem = f", {r['peak_mb']:.0f} MB peak" if r["peak_mb"] is not None else ""
            bw = f", {r['gb_per_s']:.0f} GB/s" if r.get("gb_per_s") else ""
            per_frame = f" ({r['ms_per_frame']:.1f} ms/frame)" if r.get("ms_per_frame") else ""
            parts.append(f"{impl} {r['median_ms']:.3f} ms{per_frame}{ratio}{bw}{mem}")
        lines.append(f"  {group}: " + "; ".join(parts))
        if "reference" in impls and len(impls) > 2:
            ref_ms = impls["reference"]["median_ms"]
            speeds = [f"{impl} {ref_ms / r['median_ms']:.2f}x" for impl, r in sorted(impls.items())]
            lines.append("    speed relative to the reference (its time / each one's): " + ", ".join(speeds))
    for group in sorted(_VALUES):
        lines.append(
            f"  {group}: " + "; ".join(f"{impl} {v:g}" for impl, v in sorted(_VALUES[group].items()))
        )
    text = "\n".join(lines)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)
    out = Path(
        os.environ.get(
            "VSR_FAST_BENCH_SUMMARY", Path(session.config.rootpath) / ".benchmarks" / "vsr_fast_summary.json"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "git_sha": _git_sha(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "threads": torch.get_num_threads(),
                "results": _RESULTS,
                "values": _VALUES,
            },
            indent=1,
            sort_keys=True,
        )
    )
