"""Training-step speed of jaxlm's Transformer against a plain PyTorch one, same shapes, same CPU.

Both sides: 4 pre-LayerNorm blocks, 4 heads, width 256, GELU (tanh) MLP of width 1024, learned
positions, tied embeddings, no dropout, context 128, batch 32, vocabulary 65; token
cross-entropy, backward pass, gradient-norm clipping at 1 and AdamW. Ours is built from the
trainer's parts without its metrics (``jaxlm.models.Transformer``, whose CPU attention is
``causal_attention``'s causal blocks, ``jaxlm.losses``, optax, jitted with the state donated and
the trainer's compiler options, oneDNN matrix products on CPU:
``jaxlm.runtime.compiler_options``);
torch's uses ``nn.Linear``/``nn.LayerNorm`` and ``F.scaled_dot_product_attention(is_causal=True)``
in eager mode. Runs alternate between the two so load from other processes falls on both;
figures are medians. float32 throughout, or with ``--precision=bf16`` ours under the policy
``params=float32,compute=bfloat16,output=float32`` and torch's forward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (``--precision=both``: all four, alternating,
with each side's bfloat16-over-float32 speed-up).

Usage::

    python benchmarks/transformer_speed.py
    python benchmarks/transformer_speed.py --threads=1 --cpu_time
    python benchmarks/transformer_speed.py --precision=both   # bf16 against torch autocast
    python benchmarks/transformer_speed.py --no-keep_heap   # glibc's default heap policy
    python benchmarks/transformer_speed.py --profile=/tmp/prof  # where our time goes
"""

from __future__ import annotations

import argparse
import sys

import _harness


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _harness.add_common_args(p, steps=5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=65)
    _harness.add_precision_arg(p)
    return p.parse_args()


ARGS = _args()


_harness.setup(ARGS)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxlm import losses, runtime  # noqa: E402
from jaxlm.models.transformer import Transformer  # noqa: E402


def jax_runner(precision: str):
    """A function running ``n`` jaxlm training steps; returns when the last has finished."""
    a = ARGS
    model = Transformer(
        **_harness.policy_kwargs(precision),
        vocab_size=a.vocab,
        embed_dim=a.width,
        num_layers=a.layers,
        num_heads=a.heads,
        max_len=a.seq_len,
        tie_embeddings=True,
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq_len + 1)))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, weight_decay=0.1))

    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits, _, _ = model.apply({"params": p}, tokens[:, :-1], None)
            total, count = losses.cross_entropy(logits, tokens[:, 1:])
            return total / count

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1), compiler_options=runtime.compiler_options(model))
    params = model.init(jax.random.key(0), tokens[:, :-1], None)["params"]
    state = [params, tx.init(params)]

    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            state[0], state[1], loss = step(state[0], state[1], tokens)
        jax.block_until_ready(loss)

    return run


def torch_runner(precision: str):
    """The same model and step in plain PyTorch (under ``torch.autocast`` for bf16)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    a = ARGS

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(a.width), nn.LayerNorm(a.width)
            self.qkv, self.out = nn.Linear(a.width, 3 * a.width), nn.Linear(a.width, a.width)
            self.fc, self.proj = nn.Linear(a.width, 4 * a.width), nn.Linear(4 * a.width, a.width)

        def forward(self, x):
            b, t, e = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, a.heads, e // a.heads).unbind(2)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.out(y.transpose(1, 2).reshape(b, t, e))
            return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(a.vocab, a.width)
            self.pos = nn.Parameter(torch.zeros(a.seq_len, a.width).normal_(0, 0.02))
            self.blocks = nn.ModuleList(Block() for _ in range(a.layers))
            self.ln = nn.LayerNorm(a.width)

        def forward(self, idx):
            x = self.embed(idx) + self.pos[: idx.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.ln(x) @ self.embed.weight.T

    torch.manual_seed(0)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq_len + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)

    def run(n: int) -> None:
        for _ in range(n):
            with _harness.torch_autocast(torch, precision):
                logits = model(inputs)
            loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        loss.item()

    return run


def main() -> int:
    torch = _harness.import_torch(ARGS)
    if torch is None:
        return 1
    a = ARGS
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{a.precision}; {a.layers} layers, {a.heads} heads, width {a.width}, context {a.seq_len}, "
        f"batch {a.batch}, vocab {a.vocab}; {a.steps} steps x {a.repeats} alternating runs"
    )
    tokens = a.batch * a.seq_len
    print(_harness.compare_precisions("transformer", jax_runner, torch_runner, tokens, a))
    if a.profile:
        for p in _harness.precisions(a):
            ours = jax_runner(p)
            ours(2)  # compiled before the trace
            print(_harness.profile(ours, f"{a.profile}/{p}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
