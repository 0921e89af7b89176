"""PBT against the best fixed member, at equal compute, on the built-in corpus.

A small character LSTM (embedding 64, one layer of 128, batch 32 x 64 characters) trains as a
population of N members twice: once with fixed hyperparameters (learning rates log-spaced over
``[--lr_low, --lr_high]``, dropout spread over [0, 0.3]), once with PBT from the same starting
hyperparameters (at each evaluation the worst quarter copies the best quarter and perturbs its
hyperparameters by 0.8 or 1.25). Both runs are N members for the same steps: the same
compute. The report is every member's final validation loss (whole split) in the fixed run, the
best of them, and PBT's best with its member's final hyperparameters.

Usage: python benchmarks/population_pbt.py [--members 8] [--steps 400] [--eval_every 50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def small_config(steps: int, eval_every: int):
    """The small char LSTM on the built-in corpus."""
    from jaxlm.config import load_config

    c = load_config("lstm")
    c.unlock()
    c.name = "lstm_pbt"
    c.data.batch_size, c.data.seq_len, c.data.eval_batch_size = 32, 64, 32
    c.model.embed_dim, c.model.hidden_sizes, c.model.dropout = 64, (128,), 0.1
    c.optimizer.warmup_steps = min(50, steps // 4)
    c.train.num_steps, c.train.eval_every, c.train.eval_steps = steps, eval_every, 10
    c.train.log_every, c.train.checkpoint_every, c.train.sample_tokens = eval_every, steps, 0
    c.lock()
    return c


def spread(n: int, low: float, high: float) -> list[dict[str, float]]:
    """N starting points: learning rates log-spaced over [low, high], dropout over [0, 0.3]."""
    return [
        {
            "optimizer.learning_rate": low * (high / low) ** (i / max(n - 1, 1)),
            "model.dropout": 0.3 * ((i * 3) % n) / max(n - 1, 1),
        }
        for i in range(n)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--lr_low", type=float, default=3e-4)
    p.add_argument("--lr_high", type=float, default=3e-2)
    args = p.parse_args()
    from jaxlm.search.population import train_population

    config = small_config(args.steps, args.eval_every)
    members = spread(args.members, args.lr_low, args.lr_high)
    root = Path(tempfile.mkdtemp(prefix="population-pbt-"))
    out = {}
    for name, pbt in (("fixed", False), ("pbt", True)):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            out[name] = train_population(config, members, root / name, pbt=pbt)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    fixed, pbt = out["fixed"], out["pbt"]
    print(f"{args.members} members x {args.steps} steps, evaluations every {args.eval_every}")
    for i, m in enumerate(members):
        print(
            f"  member {i}: lr {m['optimizer.learning_rate']:.2e} dropout "
            f"{m['model.dropout']:.2f} -> fixed {fixed.validation_loss[i]:.4f}, "
            f"pbt slot {pbt.validation_loss[i]:.4f}"
        )
    best_fixed = min(range(args.members), key=lambda i: fixed.validation_loss[i])
    best_pbt = min(range(args.members), key=lambda i: pbt.validation_loss[i])
    final = {k: round(v, 5) for k, v in pbt.hparams[best_pbt].items()}
    print(
        f"best fixed member {best_fixed}: validation {fixed.validation_loss[best_fixed]:.4f} "
        f"nats/char; PBT best (slot {best_pbt}): {pbt.validation_loss[best_pbt]:.4f} with "
        f"final hyperparameters {final}; difference "
        f"{pbt.validation_loss[best_pbt] - fixed.validation_loss[best_fixed]:+.4f}"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
