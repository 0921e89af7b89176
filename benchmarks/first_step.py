"""First-step time of trial 1 against trial 2: the second compiles nothing.

Two trials of ``configs/lstm.py:smoke`` that differ only in continuous hyperparameters
(learning rate, dropout, weight decay) run one after the other as separate processes, as a
search's trials do, sharing one fresh persistent compilation cache. Each reports the seconds
from its ``train_and_evaluate`` call to the end of its first step (setup, compiling or reading
the cache, the step) and how many programs XLA compiled (JAX's backend-compile events minus
its persistent-cache hits). The corpus is prepared beforehand, so neither pays for that.

Usage: python benchmarks/first_step.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIALS = [
    {"optimizer.learning_rate": 2e-3, "model.dropout": 0.1, "optimizer.weight_decay": 1e-4},
    {"optimizer.learning_rate": 7e-3, "model.dropout": 0.3, "optimizer.weight_decay": 3e-4},
]


def trial(overrides: dict, workdir: str) -> None:
    """One trial in this process; prints its JSON line."""
    sys.path.insert(0, str(ROOT))
    import jax

    from jaxlm.config import load_config
    from jaxlm.train import Hook, train_and_evaluate

    compiles, hits = [], []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, _d, **_: (
            name == "/jax/core/compile/backend_compile_duration" and compiles.append(1)
        )
    )
    jax.monitoring.register_event_listener(
        lambda name, **_: name == "/jax/compilation_cache/cache_hits" and hits.append(1)
    )

    class First(Hook):
        seconds = None

        def after_step(self, progress) -> None:
            if self.seconds is None:
                jax.block_until_ready(progress.state.params)
                self.seconds = time.perf_counter() - start

    config = load_config("lstm:smoke")
    config.unlock()
    config.train.num_steps, config.train.sample_tokens = 2, 0
    for dotted, value in overrides.items():
        section, name = dotted.split(".")
        config[section][name] = value
    hook = First()
    start = time.perf_counter()
    train_and_evaluate(config, workdir, hooks=[hook])
    print(json.dumps({"first_step_s": hook.seconds, "fresh": len(compiles) - len(hits)}))


def spawn(overrides: dict, workdir: str, cache: str) -> dict:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
    env |= {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env |= {"JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    out = subprocess.run(
        [sys.executable, __file__, "--trial", json.dumps(overrides), "--workdir", workdir],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trial", default="")
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    if args.trial:
        return trial(json.loads(args.trial), args.workdir)
    root = Path(tempfile.mkdtemp(prefix="first-step-"))
    spawn(TRIALS[0], str(root / "prepare"), str(root / "cache-prepare"))  # the corpus, once
    rows = []
    for r in range(args.repeats):
        cache = str(root / f"cache-{r}")
        one = spawn(TRIALS[0], str(root / f"{r}-1"), cache)
        two = spawn(TRIALS[1], str(root / f"{r}-2"), cache)
        rows.append((one, two))
        print(f"repeat {r}: trial 1 {one}, trial 2 {two}", flush=True)
    t1 = statistics.median(a["first_step_s"] for a, _ in rows)
    t2 = statistics.median(b["first_step_s"] for _, b in rows)
    print(
        f"first step: trial 1 {t1:.2f} s ({rows[0][0]['fresh']} programs compiled), trial 2 "
        f"{t2:.2f} s ({rows[0][1]['fresh']} compiled); medians of {args.repeats}"
    )


if __name__ == "__main__":
    main()
