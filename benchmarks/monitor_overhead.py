"""Step time with the in-step diagnostics at their default interval against without them.

Both sides are the trainer's own step (``jaxlm.train.plan.compile_step`` + ``run_step``) on the
same config, batch and initial state, one compiled with ``config.monitor.diagnostics_every=0``
(the step computes no norms) and one at the default interval (the step computes every
parameter's gradient, parameter and update norms each step). The diagnostics side also does
what the run's :class:`~jaxlm.train.hooks.Diagnostics` hook does at every interval-th step of a
global step counter: fetch the norms and write them to ``metrics.jsonl`` and TensorBoard in a
temporary folder. Timed runs alternate between the sides (the machine is shared: load falls on
both); the figures are medians over the repeats.

A timed run of ``--steps`` steps rarely reaches a fetch at the default interval of 100, so the
host's part is also timed on its own (``fetch+write ms``, one fetch and write) and charged at
one per interval: ``overhead`` is the median ratio of step times minus 1, plus that share.
Target: under 3% on both configs. On a busy machine the timed ratio is noisy, so two figures
without that noise follow: the norms' reductions alone (``norms alone``, a program that
computes only them: what they add to the step at most, fused or not) and the compiled
programs' own counts (XLA's cost analysis, FLOPs and bytes accessed, with the norms against
without).

Usage::

    python benchmarks/monitor_overhead.py                        # configs/lstm.py, transformer.py
    python benchmarks/monitor_overhead.py --configs=lstm --steps=10 --repeats=5
    python benchmarks/monitor_overhead.py --interval=1           # the fetch at every step
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's jaxlm, whichever one is installed

import _harness  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="lstm,transformer", help="recipes under configs/")
    p.add_argument(
        "--interval", type=int, default=0, help="diagnostics interval (0: the config's default)"
    )
    _harness.add_common_args(p, steps=5)
    return p.parse_args()


ARGS = _args()
_harness.setup(ARGS)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm import monitor, sharding  # noqa: E402
from jaxlm.config import load_config  # noqa: E402
from jaxlm.train import plan as plan_lib  # noqa: E402
from jaxlm.train.hooks import Diagnostics, Progress  # noqa: E402
from jaxlm.train.steps import diagnostic_names  # noqa: E402

VOCAB = 96  # about the built-in corpus's characters; no corpus is read


def runner(recipe: str, every: int, mon: monitor.Monitor | None):
    """``run(n)``: n steps of ``recipe``'s train step with diagnostics every ``every`` steps
    (0: a step that computes none), the hook fetching and writing them to ``mon``."""
    config = load_config(str(ROOT / f"configs/{recipe}.py"))
    config.unlock()
    config.monitor.diagnostics_every = every
    config.lock()
    plan = plan_lib.make_plan(config, VOCAB)
    d = config.data
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, VOCAB, (d.batch_size, d.seq_len), dtype=np.int32),
        "targets": rng.integers(0, VOCAB, (d.batch_size, d.seq_len), dtype=np.int32),
        "reset": np.asarray(False),
    }
    with jax.set_mesh(plan.mesh):
        compiled = plan_lib.compile_step(plan, config)
        step = plan_lib.run_step(plan, config, compiled)
        placed = sharding.device_batch(batch, plan.mesh)
        progress = Progress(step=0, num_steps=10**9)
        progress.state = jax.jit(plan.setup.init, out_shardings=plan.shardings)()
    hook = None
    if every and mon is not None:
        names = diagnostic_names(plan.setup.abstract.params)
        hook = Diagnostics(
            lambda step, values: mon.write(step, values, "diagnostics", echo=False, status=False),
            names,
            every_steps=every,
        )

    def run(n: int) -> None:
        for _ in range(n):
            progress.state, progress.device_metrics = step(progress.state, placed)
            progress.step += 1
            if hook is not None:
                hook.after_step(progress)
        jax.block_until_ready(progress.state)

    return run, progress, hook, plan, compiled


def cost(compiled) -> tuple[float, float]:
    """The compiled step's FLOPs and bytes accessed (XLA's cost analysis, per device)."""
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list | tuple) else c
    return float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0))


def fetch_ms(progress: Progress, hook: Diagnostics, repeats: int = 5) -> float:
    """Milliseconds of one fetch and write of the diagnostics (the step already done)."""
    jax.block_until_ready(progress.device_metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hook.write_now(progress.step, progress.device_metrics)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def norms_ms(state, repeats: int = 20) -> float:
    """Milliseconds of the three norms' reductions on their own (a program that computes only
    them, on parameter-shaped trees): what the step adds at most, if none of it fuses."""
    from jaxlm.train.steps import leaf_norms

    params = state.params
    norms = jax.jit(lambda g, p, u: jnp.stack([leaf_norms(g), leaf_norms(p), leaf_norms(u)]))
    jax.block_until_ready(norms(params, params, params))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(norms(params, params, params))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> int:
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)), "
        f"{ARGS.steps} steps x {ARGS.repeats} alternating runs per side"
    )
    for recipe in ARGS.configs.split(","):
        default = load_config(str(ROOT / f"configs/{recipe}.py")).monitor.diagnostics_every
        every = ARGS.interval or default
        with tempfile.TemporaryDirectory() as folder:
            mon = monitor.Monitor(folder, total_steps=10**9)
            off, *_, compiled_off = runner(recipe, 0, None)
            on, progress, hook, plan, compiled_on = runner(recipe, every, mon)
            times = _harness.time_alternating({"off": off, "on": on}, ARGS)
            host = fetch_ms(progress, hook)
            alone = norms_ms(progress.state)
            mon.close()
        t_off, t_on = np.median(times["off"][:, 0]), np.median(times["on"][:, 0])
        ratios = times["on"][:, 0] / times["off"][:, 0]
        share = host / 1e3 / every / t_off
        overhead = float(np.median(ratios)) - 1 + share
        leaves = len(jax.tree.leaves(plan.setup.abstract.params))
        (f_off, b_off), (f_on, b_on) = cost(compiled_off), cost(compiled_on)
        print(
            f"{recipe:12s} step off {t_off * 1e3:8.1f} ms | on {t_on * 1e3:8.1f} ms | ratio "
            f"on/off {np.median(ratios):.3f} (runs {ratios.min():.3f}-{ratios.max():.3f}) | "
            f"fetch+write {host:.2f} ms every {every} steps ({100 * share:.3f}%) | "
            f"overhead {100 * overhead:+.2f}% | {leaves} parameters x 3 norms alone {alone:.2f} ms "
            f"({100 * alone / 1e3 / t_off:.3f}% of a step), XLA cost "
            f"analysis FLOPs {100 * (f_on / f_off - 1):+.3f}%, bytes accessed "
            f"{100 * (b_on / b_off - 1):+.3f}%",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
