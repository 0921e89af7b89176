"""What several test files share: the smoke config with overrides and the CLI command line."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import jax
import ml_collections

from jaxlm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def smoke(**overrides) -> ml_collections.ConfigDict:
    """``configs/lstm.py:smoke`` with dotted overrides, e.g. ``smoke(**{"train.num_steps": 3})``."""
    config = load_config(str(ROOT / "configs/lstm.py:smoke"))
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
