"""What the checksums of :mod:`jaxlm.checkpoints.checksums` add to saving and restoring a
checkpoint of about 100M parameters (target: at most 10% more time).

Builds a GPT-2-shaped parameter tree (``benchmarks/inspect_large.py``'s builder, scaled to
``--params``) with Adam's ``mu`` and ``nu`` beside it (about 3x the parameters, as training saves
them), puts it on the device and times, as medians over ``--repeats`` runs that alternate the
two sides:

- ``store.save`` until it returns (what blocks the training loop) and until
  ``wait_until_finished``, against the same call with the checksum line switched off;
- ``store.restore`` onto the device, with and without its verification;
- ``load_state`` to the host (what ``python tools/checkpoint.py verify`` does per checkpoint),
  with and without its verification;
- ``tree_checksums`` alone, on the device arrays and on host (numpy) arrays.

The "without" side runs the same library functions with ``tree_checksums`` and ``verify``
replaced by no-ops, so the two sides differ in the checksums only. Everything is written to a
temporary folder, deleted at the end.

Usage:
  python benchmarks/checksum_cost.py [--params 100e6] [--repeats 3]
  python benchmarks/checksum_cost.py --params 2e6 --repeats 2    # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import numpy as np
from inspect_large import gpt2_like_params

GPT2_SMALL = (12, 768, 50257, 1024)  # layers, width, vocabulary, positions: 124.4M parameters
GPT2_SMALL_PARAMS = 124_439_808


def model_shape(params: float) -> tuple[int, int, int, int]:
    """12 layers; width (a multiple of 64), vocabulary and positions scaled from GPT-2 small's so
    that the tree holds about ``params`` parameters."""
    layers, width, vocab, positions = GPT2_SMALL
    s = math.sqrt(params / GPT2_SMALL_PARAMS)
    return (
        layers,
        max(64, round(width * s / 64) * 64),
        round(vocab * s),
        max(8, round(positions * s)),
    )


def train_state(params: dict) -> dict:
    """A TrainState-like tree as training saves it: step, params, Adam's moments (nonzero, as
    after some steps, so no file compresses better than a real one), rng."""
    adam = {
        "count": np.int32(1000),
        "mu": jax.tree.map(lambda x: x * np.float32(0.1), params),
        "nu": jax.tree.map(lambda x: np.square(x) * np.float32(0.01), params),
    }
    return {
        "step": np.int32(1000),
        "params": params,
        "opt_state": [None, [adam]],
        "rng": np.zeros(2, np.uint32),
    }


@contextlib.contextmanager
def without_checksums() -> Iterator[None]:
    """``store.save``, ``store.restore`` and ``load_state`` with the checksum work switched off."""
    from jaxlm.checkpoints import read, store

    with (
        mock.patch.object(store, "tree_checksums", lambda tree: {}),
        mock.patch.object(store, "verify", lambda *args: None),
        mock.patch.object(read, "verify", lambda *args: None),
    ):
        yield


def medians(
    sides: dict[str, Callable[[], tuple[float, ...]]], repeats: int
) -> dict[str, tuple[float, ...]]:
    """Runs each side ``repeats`` times, alternating which goes first; the median of each
    timing each side returns."""
    names = list(sides)
    runs: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            runs[name].append(sides[name]())
    return {n: tuple(statistics.median(col) for col in zip(*runs[n], strict=True)) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=100e6, help="parameters (about)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    args = parser.parse_args()

    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax logs every file it touches
    from jaxlm import checkpoints
    from jaxlm.config import base_config
    from jaxlm.tree import flatten

    layers, width, vocab, positions = model_shape(args.params)
    host = train_state(gpt2_like_params(layers, width, vocab, positions))
    flat = flatten(host)
    n_params = sum(a.size for a in flatten(host["params"]).values())
    n_bytes = sum(a.nbytes for a in flat.values())
    device = jax.device_put(host, jax.devices()[0])  # committed, as a training state is
    jax.block_until_ready(device)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), device
    )
    config = base_config("transformer")
    config.model.embed_dim, config.model.num_layers = width, layers
    meta = checkpoints.make_meta(config, {"kind": "byte"})
    print(
        f"{n_params / 1e6:.1f}M parameters ({layers} layers, width {width}, vocabulary {vocab:,}); "
        f"{len(flat)} arrays, {n_bytes / 1e9:.2f} GB with Adam's moments; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} cores; "
        f"medians of {args.repeats}"
    )

    folder = Path(tempfile.mkdtemp(prefix="jaxlm-checksum-cost-"))
    try:
        rows = _time_all(folder, device, host, target, meta, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _print_table(rows, n_bytes)


def _time_all(
    folder: Path, device: Any, host: Any, target: Any, meta: dict, repeats: int
) -> dict[str, Any]:
    """Every timing of the table, in seconds."""
    from jaxlm import checkpoints
    from jaxlm.checkpoints import store
    from jaxlm.checkpoints.checksums import tree_checksums

    count = iter(range(1_000_000))

    def save(checksums: bool) -> Callable[[], tuple[float, float]]:
        def once() -> tuple[float, float]:
            run = folder / f"save{next(count)}"
            mgr = store.manager(run, keep=1_000_000)
            try:
                with contextlib.nullcontext() if checksums else without_checksums():
                    start = time.perf_counter()
                    store.save(mgr, 1, device, meta)
                    returned = time.perf_counter() - start
                    mgr.wait_until_finished()
                    finished = time.perf_counter() - start
            finally:
                mgr.close()
            shutil.rmtree(run)
            return returned, finished

        return once

    start = time.perf_counter()
    tree_checksums(device)
    first_device = time.perf_counter() - start  # jit compiles for this tree
    rows: dict[str, Any] = {"compile": first_device}
    rows["save"] = medians({"with": save(True), "without": save(False)}, repeats)

    saved = folder / "saved"
    checkpoints.write_checkpoint(saved, 1, device, meta)
    mgr = store.manager(saved, keep=1_000_000, read_only=True)

    def restore(checksums: bool) -> Callable[[], tuple[float]]:
        def once() -> tuple[float]:
            with contextlib.nullcontext() if checksums else without_checksums():
                start = time.perf_counter()
                state, _ = store.restore(mgr, target, 1)
                jax.block_until_ready(state)
                return (time.perf_counter() - start,)

        return once

    def load(checksums: bool) -> Callable[[], tuple[float]]:
        def once() -> tuple[float]:
            with contextlib.nullcontext() if checksums else without_checksums():
                start = time.perf_counter()
                checkpoints.load_state(saved)
                return (time.perf_counter() - start,)

        return once

    try:
        rows["restore"] = medians({"with": restore(True), "without": restore(False)}, repeats)
        rows["load_state"] = medians({"with": load(True), "without": load(False)}, repeats)
    finally:
        mgr.close()

    def alone(tree: Any) -> Callable[[], tuple[float]]:
        def once() -> tuple[float]:
            start = time.perf_counter()
            tree_checksums(tree)
            return (time.perf_counter() - start,)

        return once

    rows["checksums"] = medians({"device": alone(device), "host": alone(host)}, repeats)
    return rows


def _print_table(rows: dict, n_bytes: int) -> None:
    print(f"\n{'':40s}{'with':>10s}{'without':>10s}{'extra':>10s}{'ratio':>8s}")
    lines = [
        ("store.save, until it returns", rows["save"], 0),
        ("store.save + wait_until_finished", rows["save"], 1),
        ("store.restore onto the device", rows["restore"], 0),
        ("load_state to the host (verify verb)", rows["load_state"], 0),
    ]
    for label, row, k in lines:
        with_, without = row["with"][k], row["without"][k]
        print(
            f"{label:40s}{with_:9.2f}s{without:9.2f}s{with_ - without:+9.2f}s{with_ / without:8.3f}"
        )
    gb = n_bytes / 1e9
    for side in ("device", "host"):
        (seconds,) = rows["checksums"][side]
        print(
            f"tree_checksums alone, {side + ' arrays':18s}{seconds:9.2f}s"
            f"  ({gb / seconds:.2f} GB/s)"
        )
    print(
        f"tree_checksums on the device, first call in a process (compiles, once per shape): "
        f"{rows['compile']:.2f} s"
    )


if __name__ == "__main__":
    main()
