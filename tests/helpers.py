"""What several test files share: the smoke config with overrides, the CLI command line, a
compile counter, tree comparisons, the abstract state of a saved run, and small parameter trees
with an update loop for the optax transforms."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def smoke(recipe: str = "lstm", **overrides) -> ml_collections.ConfigDict:
    """``configs/<recipe>.py:smoke`` with dotted overrides, e.g.
    ``smoke(**{"train.num_steps": 3})`` or ``smoke("transformer", **{"model.max_len": 32})``."""
    config = load_config(str(ROOT / f"configs/{recipe}.py:smoke"))
    for dotted, value in overrides.items():
        section, _, field = dotted.rpartition(".")
        setattr(config.get(section) if section else config, field, value)
    return config


def train_cli(*args: str) -> list[str]:
    """``python -m jaxlm.train`` on the smoke config, followed by ``args``."""
    return [sys.executable, "-m", "jaxlm.train", f"--config={ROOT}/configs/lstm.py:smoke", *args]


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations inside the block: ``with count_compiles() as n: ...; n()``.

    Counted from JAX's own monitoring events (one per backend compile), so a step function that
    is compiled once and then reused adds nothing after its first call.
    """
    events = []

    def listener(name: str, _duration: float, **_: object) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: len(events)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def count_fresh_compiles():
    """Counts XLA compilations inside the block that the persistent compilation cache did not
    serve: ``with count_fresh_compiles() as n: ...; n()`` -> ``(fresh, cache_hits)``.

    JAX reports every backend compile, a persistent-cache retrieval included
    (``/jax/core/compile/backend_compile_duration``), and each retrieval again as
    ``/jax/compilation_cache/cache_hits``: their difference is what XLA compiled.
    """
    compiles, hits = [], []

    def durations(name: str, _duration: float, **_: object) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    def events(name: str, **_: object) -> None:
        if name == "/jax/compilation_cache/cache_hits":
            hits.append(name)

    jax.monitoring.register_event_duration_secs_listener(durations)
    jax.monitoring.register_event_listener(events)
    try:
        yield lambda: (len(compiles) - len(hits), len(hits))
    finally:
        jax.monitoring.unregister_event_duration_listener(durations)
        jax.monitoring.unregister_event_listener(events)


def assert_trees_equal(a, b) -> None:
    """Same leaf paths, dtypes, shapes and bits."""
    import numpy as np

    from jaxlm.tree import flatten

    fa, fb = flatten(a), flatten(b)
    assert list(fa) == list(fb)
    for name in fa:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


def train_state_target(workdir, mesh):
    """The trainer's abstract TrainState (with shardings) for the run saved in ``workdir``."""
    from jaxlm import checkpoints, sharding, state

    meta = checkpoints.read_meta(workdir)
    config = checkpoints.run_config(meta["config"])
    vocab = checkpoints.metadata_tree(workdir)["params"]["embed"]["embedding"].shape[0]
    setup = state.build(config, vocab)
    return sharding.abstract_on(setup.abstract, sharding.state_shardings(setup.abstract, mesh))


def toy_params():
    """A tiny model-shaped tree: embedding, two layers, head."""
    k = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    return {
        "embed": {"embedding": jax.random.normal(next(k), (5, 3))},
        "layers_0": {"kernel": jax.random.normal(next(k), (3, 4)), "bias": jnp.zeros(4)},
        "layers_1": {"kernel": jax.random.normal(next(k), (4, 4)), "bias": jnp.zeros(4)},
        "head": {"kernel": jax.random.normal(next(k), (4, 5)), "bias": jnp.zeros(5)},
    }


def numbered_layers():
    """``layers_1``, ``layers_10`` and ``layers_11``, one [3, 2] kernel each: a pattern for
    layers_1 must take the first alone."""
    k = iter(jax.random.split(jax.random.PRNGKey(2), 3))
    return {f"layers_{i}": {"kernel": jax.random.normal(next(k), (3, 2))} for i in (1, 10, 11)}


@jax.jit
def grads_at(step, params):
    """Deterministic, step-dependent gradients shaped like ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), step), len(leaves))
    return jax.tree.unflatten(
        treedef, [3.0 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def run_steps(tx, params, steps: int, jit: bool = True):
    """Applies ``steps`` updates of ``tx`` with :func:`grads_at`; returns the parameter
    trajectory and the final state."""
    state = tx.init(params)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    traj = [params]
    for i in range(steps):
        params, state = step(params, state, grads_at(i, params))
        traj.append(params)
    return traj, state


def moved(a, b) -> dict[str, bool]:
    """Per top-level module: did any leaf change between two parameter trees?"""
    return {
        k: any(
            bool(jnp.any(x != y))
            for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k]), strict=True)
        )
        for k in a
    }


def train_losses(workdir) -> list[tuple[int, float]]:
    """``(step, loss)`` of every train line a run wrote to metrics.jsonl."""
    import json

    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]


def final_params(workdir):
    """The parameters of a run's latest checkpoint, as numpy."""
    from jaxlm import checkpoints

    return checkpoints.load_state(workdir)[0]["params"]
