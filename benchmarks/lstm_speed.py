"""Training-step speed of jaxlm's LSTM against ``torch.nn.LSTM`` on the same shapes, same CPU.

A full step is timed on both sides: embedding, 2-layer LSTM, softmax output layer, token
cross-entropy, backward pass, gradient-norm clipping at 5 and an SGD update, with the hidden state
carried from step to step. Our step is built from the trainer's parts (``RecurrentLM``,
``jaxlm.losses.cross_entropy``, optax ``clip_by_global_norm`` + ``sgd``, jitted with the state
donated) without its dropout and metrics; torch's is the usual eager loop. Runs alternate
between the two so that load from other processes falls on both; the figures are medians over
the repeats. float32 on both sides; ``--precision=bf16`` runs ours under the policy
``params=float32,compute=bfloat16,output=float32`` and torch under
``torch.autocast("cpu", dtype=torch.bfloat16)``, and ``--precision=both`` all four sides,
alternating, with each side's bfloat16-over-float32 speed-up.

Shapes: ``ptb_small`` (vocab 10,000, 2x200, BPTT 20, batch 20), ``char`` (vocab 65, 2x512,
BPTT 100, batch 32), ``ptb_medium`` (vocab 10,000, 2x650, BPTT 35, batch 20).

Usage::

    python benchmarks/lstm_speed.py                      # ptb_small and char
    python benchmarks/lstm_speed.py --shapes=ptb_medium --repeats=5
    python benchmarks/lstm_speed.py --threads=1          # one core each (XLA and torch)
    python benchmarks/lstm_speed.py --precision=both     # bf16 against torch autocast too
    python benchmarks/lstm_speed.py --shapes=char --profile=/tmp/prof  # where our time goes

``--cpu_time`` also reports process CPU time per step, which moves less than wall time when
other jobs share the cores. By default glibc keeps freed memory in the heap for both sides, as
``python -m jaxlm.train`` does (``jaxlm.runtime.heap``); ``--no-keep_heap`` measures glibc's
defaults, under which every step page-faults on its fresh large temporaries.
"""

from __future__ import annotations

import argparse
import functools
import sys

import _harness

SHAPES = {
    "ptb_small": dict(vocab=10_000, hidden=200, seq_len=20, batch=20),
    "char": dict(vocab=65, hidden=512, seq_len=100, batch=32),
    "ptb_medium": dict(vocab=10_000, hidden=650, seq_len=35, batch=20),
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="ptb_small,char", help=f"comma list of {list(SHAPES)}")
    _harness.add_common_args(p, steps=20)
    _harness.add_precision_arg(p)
    return p.parse_args()


ARGS = _args()


_harness.setup(ARGS)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxlm import losses  # noqa: E402
from jaxlm.models.recurrent import RecurrentLM  # noqa: E402


def jax_runner(precision: str, vocab: int, hidden: int, seq_len: int, batch: int):
    """A function running ``n`` jaxlm training steps; returns when the last has finished."""
    model = RecurrentLM(
        vocab_size=vocab,
        embed_dim=hidden,
        hidden_sizes=(hidden, hidden),
        **_harness.policy_kwargs(precision),
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (batch, seq_len + 1)))
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(1.0))

    def step(params, opt_state, carry, tokens):
        def loss_fn(p):
            logits, new_carry, _ = model.apply({"params": p}, tokens[:, :-1], carry)
            total, count = losses.cross_entropy(logits, tokens[:, 1:])
            return total / count, new_carry

        (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_carry, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    params = model.init(jax.random.key(0), tokens[:, :-1], model.initial_carry(batch))["params"]
    state = [params, tx.init(params), model.initial_carry(batch)]

    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            *state[:], loss = step(*state, tokens)
        jax.block_until_ready(loss)

    return run


def torch_runner(precision: str, vocab: int, hidden: int, seq_len: int, batch: int):
    """The same training step in plain PyTorch (``nn.Embedding``, ``nn.LSTM``, ``nn.Linear``),
    under ``torch.autocast`` for bf16."""
    import torch

    torch.manual_seed(0)
    embed = torch.nn.Embedding(vocab, hidden)
    lstm = torch.nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
    head = torch.nn.Linear(hidden, vocab)
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    sgd = torch.optim.SGD(params, lr=1.0)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    state = [(torch.zeros(2, batch, hidden), torch.zeros(2, batch, hidden))]

    def run(n: int) -> None:
        for _ in range(n):
            h = tuple(s.detach() for s in state[0])
            with _harness.torch_autocast(torch, precision):
                out, state[0] = lstm(embed(inputs), h)
                logits = head(out)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets)
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            sgd.step()
        loss.item()

    return run


def main() -> int:
    torch = _harness.import_torch(ARGS)
    if torch is None:
        return 1
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {ARGS.precision}, {ARGS.steps} steps x "
        f"{ARGS.repeats} alternating runs"
    )
    for name in ARGS.shapes.split(","):
        shape = SHAPES[name]
        tokens = shape["seq_len"] * shape["batch"]
        ours = functools.partial(jax_runner, **shape)
        theirs = functools.partial(torch_runner, **shape)
        print(_harness.compare_precisions(name, ours, theirs, tokens, ARGS), flush=True)
        for p in _harness.precisions(ARGS) if ARGS.profile else ():
            run = ours(p)
            run(2)  # compiled before the trace
            print(_harness.profile(run, f"{ARGS.profile}/{name}/{p}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
