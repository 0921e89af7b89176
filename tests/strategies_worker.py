"""Trains the Transformer and the LSTM for 20 steps under each parallel strategy on 8 fake CPU
devices (and on one of them), printing one JSON line per run: the losses, the per-device and
total bytes of parameters and optimizer state, and some leaves' specs. Run by
tests/test_sharding.py in a subprocess (the suite's own processes have 4 devices)."""

from __future__ import annotations

import json
import os
import sys

import jax

from jaxlm import data, sharding
from jaxlm.data import batching
from jaxlm.train import plan as plan_lib
from jaxlm.tree import flatten
from tests.helpers import smoke

STEPS = 20
# (strategy, data, model): one device, then each strategy over all eight.
RUNS = [
    ("data", 1, 1),
    ("data", 8, 1),
    ("fsdp", 8, 1),
    ("tensor", 2, 4),
    ("fsdp+tensor", 4, 2),
]
SHAPES = {
    # One layer, tiny, but wide enough that what tensor leaves whole (norms, positions, row
    # biases) is a few percent of the parameters, as in real models.
    "transformer": {
        "model.num_layers": 1,
        "model.embed_dim": 64,
        "model.num_heads": 4,
        "model.max_len": 16,
        "data.seq_len": 16,
    },
    # A window of 8 x 32 characters: the layer looks its input up in the [V, 4H] table.
    "lstm": {"model.embed_dim": 32, "model.hidden_sizes": (64,), "data.seq_len": 32},
}
LEAVES = {
    "transformer": ["blocks_0/qkv/kernel", "blocks_0/attn_out/kernel", "embed/embedding"],
    "lstm": ["layers_0/ih/kernel", "layers_0/hh/kernel", "embed/embedding", "head/kernel"],
}


def config_for(model: str, strategy: str = "data", n_data: int = 1, n_model: int = 1):
    """The smoke recipe at the tiny shape, under a strategy and mesh."""
    parallel = {"parallel.strategy": strategy, "parallel.data": n_data, "parallel.model": n_model}
    return smoke(model, **SHAPES[model], **parallel)


def run(model: str, strategy: str, n_data: int, n_model: int, corpus, initial) -> dict:
    """20 steps from ``initial`` (the same state for every strategy, placed by its rules)."""
    config = config_for(model, strategy, n_data, n_model)
    plan = plan_lib.make_plan(config, corpus.tokenizer.vocab_size)
    streams = batching.make_streams(corpus.train, config.data.batch_size)
    state = jax.device_put(initial, plan.shardings)
    losses = []
    with jax.set_mesh(plan.mesh):
        compiled = plan_lib.compile_step(plan, config)
        step = plan_lib.run_step(plan, config, compiled)
        for i in range(STEPS):
            batch = batching.train_batch(streams, i, config.data.seq_len, config.seed)
            state, metrics = step(state, sharding.device_batch(batch, plan.mesh))
            losses.append(float(metrics["loss"]))
    rep = plan_lib.report(config, plan, compiled)
    params = flatten(state.params)
    return {
        "model": model,
        "strategy": strategy,
        "mesh": rep["mesh"],
        "losses": losses,
        "specs": {name: list(params[name].sharding.spec) for name in LEAVES[model]},
        **{k: rep[k] for k in rep if k.endswith("_bytes") or k.endswith("_total")},
    }


def main() -> None:
    # Before JAX starts (here, not at import: pytest's doctest collection imports this file).
    # XLA's backend optimisation level 0: the partitioning under test is the same, and the ten
    # compilations take about two thirds of the time.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
    jax.config.update("jax_num_cpu_devices", 8)
    models = sys.argv[1:] or list(SHAPES)
    corpus = data.load_corpus(smoke().data)
    for model in models:
        # Initialised once, on the host: the same numbers whatever the mesh.
        setup = plan_lib.make_plan(config_for(model), corpus.tokenizer.vocab_size).setup
        initial = jax.device_get(jax.jit(setup.init)())
        for strategy, n_data, n_model in RUNS:
            result = run(model, strategy, n_data, n_model, corpus, initial)
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
