"""Fine-tuning presets side by side: validation loss on Tiny Shakespeare after the same steps.

Pretrains a small byte-level LSTM on the built-in corpus with the trainer
(``jaxlm.train_and_evaluate``), then fine-tunes it on Tiny Shakespeare with every
``config.finetune.strategy`` for the same number of steps, and trains the same model from
scratch for comparison. Each fine-tuning run loads the checkpoint with
``jaxlm.checkpoints.load_pretrained`` and trains with the trainer's own step function.

Usage::

    python benchmarks/finetune_presets.py [--pretrain_steps 400] [--steps 200] [--workdir DIR]

Measured with the defaults (2 CPU cores shared with other jobs, 8.9 min wall, 4.5 min CPU):
byte-level LSTM (embed 64, 2x256, 0.94M parameters), pretrained 400 steps on the built-in
corpus (its own validation loss 2.364 nats/byte), then 200 steps of batch 16x64 on Tiny
Shakespeare; validation loss over the first 40 windows of 16x64 bytes:

| run                          | val nats/byte | bits/byte |
|------------------------------|---------------|-----------|
| pretrained, not fine-tuned   |        3.1701 |    4.5736 |
| from scratch                 |        3.1775 |    4.5842 |
| full                         |        2.2478 |    3.2429 |
| freeze_all_but_last          |        2.3873 |    3.4441 |
| tune_last_layers             |        2.3726 |    3.4229 |
| feature                      |        2.8438 |    4.1027 |
| gradual_unfreeze             |        2.2694 |    3.2741 |
| discriminative               |        2.3881 |    3.4453 |
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxlm import checkpoints, data, optim, sharding, state
from jaxlm.config import base_config
from jaxlm.data import batching
from jaxlm.optim import STRATEGIES
from jaxlm.train import evaluate as evaluation
from jaxlm.train import steps
from jaxlm.train.loop import train_and_evaluate

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


def common(c, steps: int):
    """Model, batch and optimizer settings shared by every run."""
    c.data.tokenizer = "byte"
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.data.seq_len = 64
    c.model.embed_dim = 64
    c.model.hidden_sizes = (256, 256)
    c.model.dropout = 0.1
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 20
    c.train.num_steps = steps
    c.train.log_every = steps
    c.train.eval_every = steps
    c.train.eval_steps = 20
    c.train.checkpoint_every = steps
    c.train.sample_tokens = 0
    return c


def pretrain_config(steps: int):
    c = common(base_config("lstm"), steps)
    c.name = "finetune_presets_pretrain"
    c.data.corpus = "builtin"
    return c


def finetune_config(strategy: str, steps: int):
    c = common(base_config("lstm"), steps)
    c.name = f"finetune_presets_{strategy}"
    c.data.corpus = "text_files"
    c.data.path = str(SHAKESPEARE)
    c.finetune.strategy = strategy
    c.finetune.unfreeze_every = max(steps // 8, 1)  # all groups train for the last ~half
    return c


def run(config, init_from: str | None, eval_windows: int) -> tuple[float, float]:
    """Trains ``config`` (from ``init_from``'s parameters when given); returns (val loss, s)."""
    start = time.perf_counter()
    corpus = data.load_corpus(config.data)
    mesh = sharding.make_mesh(config.parallel.data, config.parallel.model)
    setup = state.build(config, corpus.tokenizer.vocab_size)
    b, t, num = config.data.batch_size, config.data.seq_len, config.train.num_steps
    init = jax.jit(setup.init)
    train_state = init()
    if init_from:
        params, _ = checkpoints.load_pretrained(
            init_from, train_state.params, corpus.tokenizer, model_config=config.model
        )
        train_state = init(jax.tree.map(jnp.asarray, params))
    step_fn = jax.jit(
        steps.make_train_step(setup.model, setup.tx, optim.learning_rate(config)),
        donate_argnums=0,
    )
    streams = batching.make_streams(corpus.train, b)
    with jax.set_mesh(mesh):
        for step in range(num):
            batch = batching.train_batch(streams, step, t, config.seed)
            train_state, _ = step_fn(train_state, sharding.device_batch(batch, mesh))
        val = evaluation.evaluate(
            setup.model,
            train_state.params,
            corpus.validation,
            mesh,
            batch_size=b,
            seq_len=t,
            max_windows=eval_windows,
        )
    return val["loss"], time.perf_counter() - start


def zero_shot(init_from: str, steps_: int, eval_windows: int) -> float:
    """The pretrained model's Tiny Shakespeare validation loss before any fine-tuning."""
    config = finetune_config("full", 0)
    corpus = data.load_corpus(config.data)
    mesh = sharding.make_mesh(config.parallel.data, config.parallel.model)
    setup = state.build(config, corpus.tokenizer.vocab_size)
    params, _ = checkpoints.load_pretrained(
        init_from, jax.jit(setup.init)().params, corpus.tokenizer
    )
    with jax.set_mesh(mesh):
        val = evaluation.evaluate(
            setup.model,
            jax.tree.map(jnp.asarray, params),
            corpus.validation,
            mesh,
            batch_size=config.data.batch_size,
            seq_len=config.data.seq_len,
            max_windows=eval_windows,
        )
    return val["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain_steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval_windows", type=int, default=40)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="finetune_presets_"))
    pre = root / "pretrain"
    t0 = time.perf_counter()
    train_and_evaluate(pretrain_config(args.pretrain_steps), pre)
    pre_s = time.perf_counter() - t0
    rows = [("pretrained, not fine-tuned", zero_shot(str(pre), 0, args.eval_windows), 0.0)]
    rows.append(
        ("from scratch", *run(finetune_config("full", args.steps), None, args.eval_windows))
    )
    for strategy in STRATEGIES:
        loss, secs = run(finetune_config(strategy, args.steps), str(pre), args.eval_windows)
        rows.append((strategy, loss, secs))
    print(
        f"\nByte-level LSTM (embed 64, 2x256), pretrained {args.pretrain_steps} steps on the "
        f"built-in corpus ({pre_s:.0f} s); {args.steps} steps of batch 16x64 on Tiny Shakespeare; "
        f"validation loss over the first {args.eval_windows} windows of 16x64 bytes."
    )
    print(f"| {'run':<28} | val nats/byte | bits/byte | seconds |")
    print(f"|{'-' * 30}|---------------|-----------|---------|")
    for name, loss, secs in rows:
        print(f"| {name:<28} | {loss:13.4f} | {loss / math.log(2):9.4f} | {secs:7.1f} |")


if __name__ == "__main__":
    main()
