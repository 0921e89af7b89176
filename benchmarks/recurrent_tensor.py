"""Does the tensor strategy pay for a recurrent model? Train-step time of an LSTM under the
"data" strategy against "tensor" (and "fsdp"), on 8 fake CPU devices.

Under "tensor" the gate columns of every layer's ``ih`` and ``hh`` products are split over the
"model" axis, so each device computes its share of the gates of every time step, and before the
next step's recurrent product ``h @ W_hh`` every device needs the whole ``h``: one gather per
time step and layer, inside the time loop, forward and backward. "data" keeps the weights whole
on every device and splits the batch; its only collective is the gradient's sum, once per step.

The steps are the trainer's own (``jaxlm.train.plan``: the rules in force, the step compiled
ahead of time, donated state), fed the same batch each time. Runs alternate between the
strategies so that load from other processes falls on all of them; the figures are medians.
The compiled step's collectives are counted from its HLO (those inside the time loop run once
per time step).

On fake CPU devices every "device" shares the same cores: splitting work cannot make a step
faster here, only its cost can show. Run it on real devices to see whether the split pays.

Usage::

    python benchmarks/recurrent_tensor.py                     # 2x256, batch 32, window 64
    python benchmarks/recurrent_tensor.py --hidden=512 --seq_len=100 --repeats=5
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices")
    p.add_argument("--model_axis", type=int, default=4, help='"model" axis size under tensor')
    p.add_argument("--hidden", type=int, default=256, help="hidden size of each of 2 layers")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per strategy, alternating")
    p.add_argument(
        "--strategies",
        default="data,tensor,fsdp,one",
        help='comma list of data, fsdp, tensor, fsdp+tensor and "one" (one device); the first '
        "is the one the ratios are of",
    )
    return p.parse_args()


ARGS = _args()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", ARGS.devices)

from jaxlm import data, sharding  # noqa: E402
from jaxlm.config import load_config  # noqa: E402
from jaxlm.data import batching  # noqa: E402
from jaxlm.train import plan as plan_lib  # noqa: E402

COLLECTIVE = re.compile(
    r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
)


def collectives(hlo: str) -> tuple[dict[str, int], dict[str, int]]:
    """The collectives of a compiled program's HLO: all of them, and those in the bodies of
    its while loops (the time loops: each runs once per time step)."""
    computations, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if head:
            current = computations.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    looped = [line for body in bodies for line in computations.get(body, [])]
    in_loops = collections.Counter(op for line in looped for op in COLLECTIVE.findall(line))
    return dict(collections.Counter(COLLECTIVE.findall(hlo))), dict(in_loops)


def config_for(strategy: str):
    """The LSTM recipe at the benchmark's shape under a strategy ("one": data on one device)."""
    c = load_config("lstm")
    c.unlock()
    c.data.batch_size, c.data.seq_len = ARGS.batch, ARGS.seq_len
    c.model.embed_dim, c.model.hidden_sizes = ARGS.embed, (ARGS.hidden, ARGS.hidden)
    c.model.dropout = 0.0
    c.parallel.strategy = "data" if strategy == "one" else strategy
    c.parallel.model = ARGS.model_axis if "tensor" in strategy else 1
    c.parallel.data = 1 if strategy == "one" else ARGS.devices // c.parallel.model
    c.lock()
    return c


def build(strategy: str, corpus, batch_np):
    """The compiled step, a state, the batch on the mesh, and the step's collectives."""
    config = config_for(strategy)
    plan = plan_lib.make_plan(config, corpus.tokenizer.vocab_size)
    state = jax.jit(plan.setup.init, out_shardings=plan.shardings)()
    with jax.set_mesh(plan.mesh):
        compiled = plan_lib.compile_step(plan, config)
    total, in_loops = collectives(compiled.as_text())
    return {
        "plan": plan,
        "step": plan_lib.run_step(plan, config, compiled),
        "state": state,
        "batch": sharding.device_batch(batch_np, plan.mesh),
        "collectives": total,
        "in_loops": in_loops,
    }


def run(side: dict, n: int) -> float:
    """Seconds per step over ``n`` steps."""
    with jax.set_mesh(side["plan"].mesh):
        t = time.perf_counter()
        for _ in range(n):
            side["state"], metrics = side["step"](side["state"], side["batch"])
        jax.block_until_ready((side["state"], metrics))
        return (time.perf_counter() - t) / n


def main() -> None:
    corpus = data.load_corpus(config_for("data").data)
    streams = batching.make_streams(corpus.train, ARGS.batch)
    batch_np = batching.train_batch(streams, 0, ARGS.seq_len, 0)
    names = ARGS.strategies.split(",")
    sides = {name: build(name, corpus, batch_np) for name in names}
    for side in sides.values():
        run(side, 1)  # warm
    times = {name: [] for name in names}
    for _ in range(ARGS.repeats):
        for name in names:
            times[name].append(run(sides[name], ARGS.steps))
    print(
        f"LSTM 2x{ARGS.hidden}, batch {ARGS.batch}, window {ARGS.seq_len}, {ARGS.devices} fake CPU "
        f"devices on {len(os.sched_getaffinity(0))} cores; medians of {ARGS.repeats} runs of "
        f"{ARGS.steps} steps"
    )
    medians = {name: statistics.median(times[name]) for name in names}
    for name in names:
        mesh = dict(sides[name]["plan"].mesh.shape)
        ratios = ", ".join(f"{medians[name] / medians[o]:.2f}x {o}'s" for o in names if o != name)
        print(f"  {name:5s} mesh {mesh}: {medians[name] * 1e3:7.1f} ms/step ({ratios})")
        print(
            f"        collectives {sides[name]['collectives']}; in the time loops (each runs once "
            f"per time step) {sides[name]['in_loops']}"
        )


if __name__ == "__main__":
    main()
