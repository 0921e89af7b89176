"""Trials per hour: N smoke-sized members in one vmapped step against N sequential runs.

Both sides train the same N configs (``configs/lstm.py:smoke``, learning rates and dropout
spread over the members) to the end and evaluate the whole validation and test splits: the
sequential side with ``jaxlm.train_and_evaluate`` once per config (what a search without
``--population`` does, one trial after another), the population side with
``jaxlm.search.population.train_population`` once. Both sides are warmed up first and read
their compiled programs from one persistent compilation cache, so neither pays for compiling
(the sequential side compiles nothing after its first run either: hyperparameters are step
arguments). The report is each side's trials per hour, medians over ``--repeats``
alternating runs, and the ratio.

Usage: python benchmarks/population_speed.py [--members 8] [--repeats 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def members(n: int) -> list[dict[str, float]]:
    """N learning rates log-spaced over [1e-3, 1e-2] and dropout over [0.05, 0.3]."""
    return [
        {
            "optimizer.learning_rate": 1e-3 * 10 ** (i / max(n - 1, 1)),
            "model.dropout": 0.05 + 0.25 * ((i * 5) % n) / max(n - 1, 1),
        }
        for i in range(n)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating")
    p.add_argument("--steps", type=int, default=60, help="train steps of each trial")
    args = p.parse_args()
    cache = tempfile.mkdtemp(prefix="population-speed-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    from jaxlm.runtime import keep_freed_memory

    keep_freed_memory()  # as python -m jaxlm.train does
    from jaxlm.config import load_config
    from jaxlm.search.population import member_configs, train_population
    from jaxlm.train import train_and_evaluate

    config = load_config("lstm:smoke")
    config.unlock()
    config.train.num_steps = args.steps
    config.train.sample_tokens = 0  # a trial needs no sample
    config.lock()
    spread = members(args.members)
    configs = member_configs(config, spread)
    root = Path(tempfile.mkdtemp(prefix="population-speed-"))

    def sequential(tag: str) -> float:
        start = time.perf_counter()
        for i, c in enumerate(configs):
            train_and_evaluate(c, root / f"{tag}-solo-{i}")
        return time.perf_counter() - start

    def together(tag: str) -> float:
        start = time.perf_counter()
        train_population(config, spread, root / f"{tag}-pop")
        return time.perf_counter() - start

    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        sequential("warm"), together("warm")
    seq, pop = [], []
    for r in range(args.repeats):
        with contextlib.redirect_stdout(io.StringIO()):
            seq.append(sequential(f"r{r}"))
            pop.append(together(f"r{r}"))
        print(f"run {r}: sequential {seq[-1]:.1f} s, population {pop[-1]:.1f} s", flush=True)
    n = args.members
    s, q = statistics.median(seq), statistics.median(pop)
    ratios = [a / b for a, b in zip(seq, pop, strict=True)]
    print(
        f"{n} trials of {args.steps} steps ({config.name}): sequential {3600 * n / s:.0f} "
        f"trials/h ({s:.1f} s), population {3600 * n / q:.0f} trials/h ({q:.1f} s); ratio "
        f"{s / q:.2f} (runs {min(ratios):.2f}-{max(ratios):.2f}), medians of {args.repeats}"
    )
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
