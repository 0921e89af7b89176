"""What the speed benchmarks share: their common flags, process set-up before JAX starts, and
alternating timed runs of ours against a peer, reported as tokens/s and a ratio."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

Runner = Callable[[int], None]  # runs n training steps, returns when the last has finished


def add_common_args(p: argparse.ArgumentParser, steps: int) -> None:
    """Adds --steps, --repeats, --threads, --cpu_time and --keep_heap/--no-keep_heap."""
    p.add_argument("--steps", type=int, default=steps, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side, alternating")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="cores for the whole process, so for each side (0: all); torch gets as many threads",
    )
    p.add_argument("--cpu_time", action="store_true", help="also report CPU time per step")
    p.add_argument(
        "--keep_heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc keeps freed memory in the heap (jaxlm.runtime.heap, as python -m jaxlm.train "
        "does), so fresh temporaries do not page-fault every step; the process setting applies "
        "to both sides",
    )
    p.add_argument(
        "--profile",
        default="",
        help="folder: afterwards, trace 3 of our steps with jax.profiler there and print the "
        "XLA operations that took the most time",
    )


def setup(args: argparse.Namespace) -> None:
    """Process-wide settings that must precede JAX's start: heap policy and cores.

    ``--threads=N`` pins the process to its first N cores before any thread starts, so every
    thread XLA, oneDNN and torch create later inherits that: a flag such as
    ``--xla_cpu_multi_thread_eigen=false`` leaves XLA's other threads and oneDNN's running on
    every core.
    """
    if args.keep_heap:
        from jaxlm.runtime import keep_freed_memory

        keep_freed_memory()
    if args.threads:
        cores = sorted(os.sched_getaffinity(0))
        if args.threads > len(cores):
            raise SystemExit(f"--threads={args.threads}: this process may use {len(cores)} cores")
        os.sched_setaffinity(0, cores[: args.threads])


def import_torch(args: argparse.Namespace):
    """torch with ``args.threads`` threads, or None (and a hint on stderr) if not installed."""
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install -e '.[parity]'", file=sys.stderr)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch


def timed(run: Runner, n: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per step over ``n`` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(n)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """Adds ``--precision``: float32, bf16 (both sides in bfloat16 compute), or both."""
    p.add_argument(
        "--precision",
        choices=("float32", "bf16", "both"),
        default="float32",
        help="bf16: ours under the policy params=float32,compute=bfloat16,output=float32, torch "
        "under torch.autocast('cpu', dtype=torch.bfloat16); both: all four sides alternating, "
        "with each side's bf16-over-float32 speed-up",
    )


def precisions(args: argparse.Namespace) -> list[str]:
    """The precisions ``--precision`` asks for, float32 first."""
    return ["float32", "bf16"] if args.precision == "both" else [args.precision]


def policy_kwargs(precision: str) -> dict:
    """A jaxlm model's dtype arguments for ``precision`` (float32 master weights and logits)."""
    if precision == "float32":
        return {}
    import jax.numpy as jnp

    return dict(dtype=jnp.bfloat16, param_dtype=jnp.float32, output_dtype=jnp.float32)


def torch_autocast(torch, precision: str):
    """``torch.autocast`` on the CPU in bfloat16 for ``bf16``, else a context that does nothing."""
    import contextlib

    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def time_alternating(runners: dict[Any, Runner], args) -> dict[Any, Any]:
    """Warms every runner up, then alternates ``args.repeats`` timed runs of each.

    Returns:
      For each runner, an array ``[repeats, 2]`` of wall and CPU seconds per step.
    """
    import numpy as np  # after setup(): numpy's threads start at import

    for run in runners.values():
        run(2)  # compile, warm up
    rows = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            rows[name].append(timed(run, args.steps))
    return {name: np.array(r) for name, r in rows.items()}


def compare(name: str, ours: Runner, theirs: Runner, tokens: int, args) -> str:
    """Warms both up, alternates ``args.repeats`` timed runs, and reports medians.

    Returns:
      One line: tokens/s of each, the ratio ours/theirs (median and range over the runs) and,
      with ``args.cpu_time``, CPU milliseconds per step.
    """
    times = time_alternating({"ours": ours, "theirs": theirs}, args)
    return _line(name, times["ours"], times["theirs"], tokens, args)


def _line(name: str, ours: Any, theirs: Any, tokens: int, args) -> str:
    import numpy as np

    j_wall, j_cpu = np.median(ours, axis=0)
    t_wall, t_cpu = np.median(theirs, axis=0)
    ratios = theirs[:, 0] / ours[:, 0]
    line = (
        f"{name:11s} jaxlm {tokens / j_wall:8.0f} tok/s | torch {tokens / t_wall:8.0f} tok/s | "
        f"ratio {t_wall / j_wall:.2f} (runs {min(ratios):.2f}-{max(ratios):.2f})"
    )
    if args.cpu_time:
        line += f" | CPU ms/step jaxlm {j_cpu * 1e3:.1f} torch {t_cpu * 1e3:.1f}"
    return line


def compare_precisions(
    name: str, ours: Callable[[str], Runner], theirs: Callable[[str], Runner], tokens: int, args
) -> str:
    """:func:`compare` at each of ``--precision``'s precisions, all sides alternating.

    Args:
      name: the shape's name.
      ours: builds our runner for a precision (``"float32"`` or ``"bf16"``).
      theirs: builds the peer's runner for a precision.
      tokens: tokens per step.
      args: the parsed flags.

    Returns:
      A line per precision (ours against the peer at that precision) and, with both, a line of
      each side's bf16-over-float32 speed-up (median over runs of the float32/bf16 step time).
    """
    import numpy as np  # after setup(): numpy's threads start at import

    runners = {}
    for p in precisions(args):
        runners[("ours", p)], runners[("theirs", p)] = ours(p), theirs(p)
    times = time_alternating(runners, args)
    lines = [
        _line(f"{name} {p}", times[("ours", p)], times[("theirs", p)], tokens, args)
        for p in precisions(args)
    ]
    if len(precisions(args)) == 2:
        up = {
            side: np.median(times[(side, "float32")][:, 0] / times[(side, "bf16")][:, 0])
            for side in ("ours", "theirs")
        }
        lines.append(
            f"{name} bf16 over float32: jaxlm {up['ours']:.2f}x | torch {up['theirs']:.2f}x"
        )
    return "\n".join(lines)


def profile(ours: Runner, folder: str, top: int = 25) -> str:
    """Traces three of our steps with ``jax.profiler`` and tabulates the compiled operations.

    Args:
      ours: the runner to trace (already compiled).
      folder: where the trace goes (open it in Perfetto or TensorBoard for the timeline).
      top: how many operations to list.

    Returns:
      A table of the operations (XLA thunks: ``ynn_fusion.3``, ``copy.25``, ...) with the most
      time per step and how often each ran per step. Operations that ran at the same time on
      the two cores overlap, so the times need not add up to the step; the operations inside a
      time loop appear once per iteration.
    """
    import collections
    import glob
    import gzip
    import json
    import re

    import jax

    with jax.profiler.trace(folder):
        ours(3)
    trace = max(glob.glob(f"{folder}/plugins/profile/*/*.trace.json.gz"), key=os.path.getmtime)
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for e in events:  # HLO instruction names only (not Python, runtime or thread-pool spans)
        if e.get("ph") == "X" and re.fullmatch(r"[\w\-]+(\.\d+)?", e["name"]):
            total[e["name"]] += e["dur"] / 3e3  # microseconds over 3 steps -> ms per step
            calls[e["name"]] += 1
    lines = [f"profile ({trace}): ms/step  calls/step  operation"]
    for name, ms in total.most_common(top):
        lines.append(f"{ms:9.2f} {calls[name] / 3:10.0f}  {name}")
    return "\n".join(lines)


def trainer(config: Any, corpus: Any) -> Runner:
    """A runner that trains ``n`` steps of ``config`` as the training loop does: its windows (with
    augmentation's raw margin and tables when the config asks), its compiled step."""
    import jax

    from jaxlm import data, sharding
    from jaxlm.data import augment
    from jaxlm.train import plan as plan_lib

    vocab = corpus.tokenizer.vocab_size
    plan = plan_lib.make_plan(config, vocab)
    length = config.data.seq_len + augment.margin(config.data)
    windows = data.train_data(config, corpus, length=length)  # as the training loop reads
    with jax.set_mesh(plan.mesh):
        compiled = plan_lib.compile_step(plan, config)
        tables = augment.tables(config.data, corpus.train, corpus.tokenizer, vocab)
        step_fn = plan_lib.run_step(plan, config, compiled, tables)
        state = jax.jit(plan.setup.init, out_shardings=plan.shardings)()
    box = {"state": state, "step": 0}

    def run(n: int) -> None:
        with jax.set_mesh(plan.mesh):
            for _ in range(n):
                batch = sharding.device_batch(windows.batch(box["step"]), plan.mesh)
                box["state"], metrics = step_fn(box["state"], batch)
                box["step"] += 1
            jax.block_until_ready((box["state"], metrics))

    return run
