"""Training-step speed of jaxlm's LSTM against ``torch.nn.LSTM`` on the same shapes, same CPU.

A full step is timed on both sides: embedding, 2-layer LSTM, softmax output layer, token
cross-entropy, backward pass, gradient-norm clipping at 5 and an SGD update, with the hidden state
carried from step to step. Our step is the trainer's (``jaxlm.losses.cross_entropy``, optax
``clip_by_global_norm`` + ``sgd``, jitted with the state donated); torch's is the usual eager
loop. Runs alternate between the two so that load from other processes falls on both; the
figures are medians over the repeats. float32 throughout on both sides.

Shapes: ``ptb_small`` (vocab 10,000, 2x200, BPTT 20, batch 20), ``char`` (vocab 65, 2x512,
BPTT 100, batch 32), ``ptb_medium`` (vocab 10,000, 2x650, BPTT 35, batch 20).

Usage::

    python benchmarks/lstm_speed.py                      # ptb_small and char
    python benchmarks/lstm_speed.py --shapes=ptb_medium --repeats=5
    python benchmarks/lstm_speed.py --threads=1          # one core each (XLA and torch)

``--cpu_time`` also reports process CPU time per step, which moves less than wall time when
other jobs share the cores. ``--keep_heap`` stops glibc from unmapping large freed buffers
(both sides gain; see :func:`keep_heap`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = {
    "ptb_small": dict(vocab=10_000, hidden=200, seq_len=20, batch=20),
    "char": dict(vocab=65, hidden=512, seq_len=100, batch=32),
    "ptb_medium": dict(vocab=10_000, hidden=650, seq_len=35, batch=20),
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="ptb_small,char", help=f"comma list of {list(SHAPES)}")
    p.add_argument("--steps", type=int, default=20, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side, alternating")
    p.add_argument("--threads", type=int, default=0, help="threads per side (0: defaults)")
    p.add_argument("--cpu_time", action="store_true", help="also report CPU time per step")
    p.add_argument(
        "--keep_heap",
        action="store_true",
        help="glibc: serve big buffers from the heap and keep freed memory (mallopt), so each "
        "step's fresh temporaries do not page-fault; applies to both sides",
    )
    return p.parse_args()


ARGS = _args()


def keep_heap() -> None:
    """Raises glibc's mmap and trim thresholds to 1 GiB (as MALLOC_MMAP_THRESHOLD_ would).

    Large temporaries (a [400, 10000] float32 logits array is 16 MB) are otherwise mmap-ed and
    unmapped every step, and each step pays the page faults of touching them afresh.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


if ARGS.keep_heap:
    keep_heap()
if ARGS.threads:  # before JAX starts
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={'true' if ARGS.threads > 1 else 'false'} "
        + os.environ.get("XLA_FLAGS", "")
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxlm import losses  # noqa: E402
from jaxlm.models.rnn import RecurrentLM  # noqa: E402


def jax_runner(vocab: int, hidden: int, seq_len: int, batch: int):
    """A function running ``n`` jaxlm training steps; returns when the last has finished."""
    model = RecurrentLM(vocab_size=vocab, embed_dim=hidden, hidden_sizes=(hidden, hidden))
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


def torch_runner(vocab: int, hidden: int, seq_len: int, batch: int):
    """The same training step in plain PyTorch (``nn.Embedding``, ``nn.LSTM``, ``nn.Linear``)."""
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
            out, state[0] = lstm(embed(inputs), h)
            loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, vocab), targets)
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            sgd.step()
        loss.item()

    return run


def timed(run, n: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per step over ``n`` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(n)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main() -> int:
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install -e '.[parity]'", file=sys.stderr)
        return 1
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), float32, {ARGS.steps} steps x {ARGS.repeats} "
        "alternating runs"
    )
    for name in ARGS.shapes.split(","):
        shape = SHAPES[name]
        tokens = shape["seq_len"] * shape["batch"]
        ours, theirs = jax_runner(**shape), torch_runner(**shape)
        ours(2), theirs(2)  # compile, warm up
        rows = []
        for _ in range(ARGS.repeats):
            rows.append((*timed(ours, ARGS.steps), *timed(theirs, ARGS.steps)))
        j_wall, j_cpu, t_wall, t_cpu = np.median(np.array(rows), axis=0)
        ratios = [r[2] / r[0] for r in rows]
        line = (
            f"{name:10s} jaxlm {tokens / j_wall:9.0f} tok/s | torch {tokens / t_wall:9.0f} tok/s | "
            f"ratio {tokens / j_wall / (tokens / t_wall):.2f} (runs {min(ratios):.2f}-"
            f"{max(ratios):.2f})"
        )
        if ARGS.cpu_time:
            line += f" | CPU ms/step jaxlm {j_cpu * 1e3:.1f} torch {t_cpu * 1e3:.1f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
