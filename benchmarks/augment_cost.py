"""What on-device augmentation (``config.data.augment``, :mod:`jaxlm.data.augment`) adds to a
training step (target: under 5% more step time) on the default char LSTM (``configs/lstm.py``)
and on ``configs/transformer.py``.

For each recipe, two runs of the same model side by side in one process: augmentation off, and
on (every edit at ``--rate``, whole words with ``--unit=word``, the unigram source, the default
margin). Each side steps as ``python -m jaxlm.train`` does: the step compiled ahead of time
(``jaxlm.train.plan``), the batch of each step read on the host (``train_batch``, with the raw
margin on the augmented side) and placed (``device_batch``). Timed runs alternate between the
sides (``benchmarks/_harness.py``); the line gives the medians and the ratio on/off of the
step time, and the edit compiled on its own (what the augmented step adds, measured apart from
the step's own noise on a busy machine).

Usage:
  python benchmarks/augment_cost.py [--recipes lstm,transformer] [--steps 20] [--repeats 5]
  python benchmarks/augment_cost.py --recipes lstm --steps 5 --repeats 2    # a quick check
"""

from __future__ import annotations

import argparse

import _harness


def _edit_only(config, corpus):
    """A function that runs only the augmenting edit of ``n`` steps' batches (compiled)."""
    import jax

    from jaxlm.data import augment, batching

    spec = augment.from_config(config.data)
    vocab = corpus.tokenizer.vocab_size
    tables = augment.tables(config.data, corpus.train, corpus.tokenizer, vocab)
    streams = batching.make_streams(corpus.train, config.data.batch_size)
    t = config.data.seq_len
    host = batching.train_batch(streams, 0, t, config.seed, length=t + spec.extra)
    batch = {k: jax.numpy.asarray(v) for k, v in host.items()}
    edit = jax.jit(lambda key, batch, tables: augment.apply(spec, key, batch, tables))
    box = {"step": 0}

    def run(n: int) -> None:
        for _ in range(n):
            out = edit(jax.random.PRNGKey(box["step"]), batch, tables)
            box["step"] += 1
        jax.block_until_ready(out)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _harness.add_common_args(p, steps=20)
    p.add_argument("--recipes", default="lstm,transformer", help="recipes of configs/, by name")
    p.add_argument("--rate", type=float, default=0.1, help="each edit's rate on the 'on' side")
    p.add_argument("--unit", choices=("token", "word"), default="word")
    args = p.parse_args()
    _harness.setup(args)

    import jax
    import numpy as np

    from jaxlm import data
    from jaxlm.config import load_config
    from jaxlm.data import augment

    print(
        f"{jax.device_count()} {jax.devices()[0].platform} device(s); every edit at "
        f"{args.rate}, unit {args.unit}; {args.steps} steps per timed run, medians of "
        f"{args.repeats} alternating runs"
    )
    for recipe in args.recipes.split(","):
        off = load_config(recipe)
        on = load_config(recipe)
        for op in ("replace", "delete", "insert", "swap"):
            on.data.augment[op] = args.rate
        on.data.augment.unit = args.unit
        corpus = data.load_corpus(off.data)
        sides = {"off": _harness.trainer(off, corpus), "on": _harness.trainer(on, corpus)}
        sides["edit"] = _edit_only(on, corpus)
        times = _harness.time_alternating(sides, args)
        t_off, t_on, t_edit = (np.median(times[s][:, 0]) for s in ("off", "on", "edit"))
        ratios = times["on"][:, 0] / times["off"][:, 0]
        b, t = off.data.batch_size, off.data.seq_len
        print(
            f"{recipe:12s} B={b} T={t} margin {augment.margin(on.data)}: off "
            f"{t_off * 1e3:7.1f} ms/step | on {t_on * 1e3:7.1f} ms/step | on/off "
            f"{t_on / t_off:.3f} (runs {ratios.min():.3f}-{ratios.max():.3f}) | the edit alone "
            f"{t_edit * 1e3:.2f} ms ({t_edit / t_off:.2%} of a step)"
        )


if __name__ == "__main__":
    main()
