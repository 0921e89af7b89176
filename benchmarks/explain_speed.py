"""Integrated gradients at 64 steps over a 256-token context: jaxlm.explain against a Python
loop of one gradient per step, for the default char LSTM and the Transformer recipe.

``jaxlm.explain.attribute`` runs every step of every target in one jitted program (vmap over
the steps, ``lax.map`` over chunks); the peer is what one writes without it: one jitted
gradient call per interpolation step, the steps summed in Python. Both compute the same
attributions (checked here). The models are randomly initialised (speed does not depend on
training). Also reports the completeness gap, ``sum(attributions) - (f(x) - f(baseline))``
relative to ``f(x) - f(baseline)``, at 16/32/64/128 steps.

Run: ``python benchmarks/explain_speed.py [--repeats 3] [--context 256] [--steps 64]``.
The target is at most 10 s per model on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _models(vocab: int):
    from jaxlm.config import load_config
    from jaxlm.models import get_model

    out = {}
    for recipe in ("lstm", "transformer"):
        config = load_config(recipe)
        out[recipe] = get_model(config.model, vocab)
    return out


def bench(name: str, model, tokens, args) -> None:
    """Times one model's integrated gradients both ways and prints the completeness gaps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.explain import Target, attribute, gauss_legendre

    carry = model.initial_carry(1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(tokens)[None], carry)["params"]
    target = Target(-1, token=int(tokens[-1]))

    def ours(steps: int = args.steps):
        e = attribute(
            model,
            params,
            tokens,
            target,
            method="ig",
            steps=steps,
            chunk=args.chunk,
            attention=False,
        )
        return e.targets[0]

    emb = jnp.asarray(params["embed"]["embedding"], jnp.float32)[tokens]

    @jax.jit
    def grad_at(alpha):
        def score(x):
            ids = jnp.asarray(tokens)[None]
            logits, _, _ = model.apply({"params": params}, ids, carry, embedded=x[None])
            return jax.nn.log_softmax(logits[0, -1])[target.token]

        return jax.grad(score)(alpha * emb)

    def loop(steps: int = args.steps):
        alphas, weights = gauss_legendre(steps)
        total = jnp.zeros_like(emb)
        for a, w in zip(alphas.tolist(), weights.tolist(), strict=True):
            total = total + w * grad_at(a)
        return np.asarray((total * emb).sum(-1))

    t0 = time.perf_counter()
    first = ours()
    cold = time.perf_counter() - t0
    np.testing.assert_allclose(first.attributions["ig"], loop(), atol=1e-4)
    ours_s, loop_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours()
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loop()
        loop_s.append(time.perf_counter() - t0)
    o, lp = statistics.median(ours_s), statistics.median(loop_s)
    print(
        f"{name}: IG {args.steps} steps over {len(tokens)} tokens: jaxlm.explain {o:.2f} s "
        f"(first call with compilation {cold:.1f} s; runs {', '.join(f'{x:.2f}' for x in ours_s)}"
        f"), a Python loop of per-step gradients {lp:.2f} s: {lp / o:.2f}x; "
        f"target <= 10 s: {'met' if o <= 10 else 'NOT met'}",
        flush=True,
    )
    gaps = []
    for steps in (16, 32, 64, 128):
        t = ours(steps)
        gaps.append(f"{steps}: {100 * t.completeness_gap:+.4f}%")
    change = t.score - t.baseline_score
    print(f"  completeness gap (f(x) - f(baseline) = {change:+.4f}): " + ", ".join(gaps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=65, help="a character vocabulary's size")
    p.add_argument("--chunk", type=int, default=None, help="rows at once (default: auto)")
    p.add_argument("--models", default="lstm,transformer", help="recipes, comma-separated")
    args = p.parse_args()

    import numpy as np

    tokens = np.random.default_rng(0).integers(0, args.vocab, args.context).astype(np.int32)
    models = _models(args.vocab)
    for name in args.models.split(","):
        bench(name, models[name], tokens, args)


if __name__ == "__main__":
    main()
