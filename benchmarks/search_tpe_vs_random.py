"""TPE against random search on a small character LSTM, the same trial budget, and TPE with a
pruner: the best-so-far curves of each and the default config's value, as a PNG.

    python benchmarks/search_tpe_vs_random.py                    # 24 trials each, a few min/study
    python benchmarks/search_tpe_vs_random.py --trials=8 --steps=60   # a quick look

Each study runs in this process through :func:`jaxlm.search.search` on the built-in corpus,
over ``configs/search/lstm.py:rates`` (learning rate, dropout, weight decay: every trial has the
same shapes). The objective is the final validation loss (nats/char, the whole split). Prints
each study's best value, the trial it was found at, the steps trained (pruning's saving) and
the wall time, and writes ``OUT/best_so_far.png`` and ``OUT/summary.json``. One seed per
sampler: a single run says little about which sampler is better in general, and the machine
may be shared, so the times are rough.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def base_config(steps: int):
    from jaxlm.config import load_config

    c = load_config("lstm")
    with c.unlocked():
        c.name = "lstm_search_bench"
    c.data.batch_size = 32
    c.data.seq_len = 64
    c.data.eval_batch_size = 64
    c.model.embed_dim = 32
    c.model.hidden_sizes = (128,)
    c.train.num_steps = steps
    c.train.eval_every = max(1, steps // 8)
    c.train.eval_steps = 8
    c.train.log_every = max(1, steps // 4)
    c.train.checkpoint_every = steps
    c.train.sample_tokens = 0
    c.optimizer.warmup_steps = max(1, steps // 20)
    c.lock()
    return c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--steps", type=int, default=200, help="training steps per trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--studies",
        default="random,tpe,tpe+median",
        help="which studies: random, tpe, tpe+PRUNER (median, hyperband, asha), by commas",
    )
    p.add_argument("--out", default="runs/bench_search", help="studies, plot and summary go here")
    args = p.parse_args()

    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from jaxlm.search import load_space, search
    from jaxlm.train.loop import train_and_evaluate

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    config = base_config(args.steps)
    space = load_space("lstm:rates")
    quiet = lambda line: None  # noqa: E731

    t0 = time.perf_counter()
    default = train_and_evaluate(config, out / "default")["validation_loss"]  # resumes: done
    print(f"default config: validation loss {default:.4f} ({time.perf_counter() - t0:.0f}s)")

    runs = {}
    for name in args.studies.split(","):
        sampler, _, pruner = name.partition("+")
        runs[name] = dict(sampler=sampler, pruner=pruner or "none")
    summary = {"default": default, "trials": args.trials, "steps": args.steps, "studies": {}}
    curves, values_of = {}, {}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        study = search(
            config, space, out / name, trials=args.trials, seed=args.seed, log=quiet, **kw
        )
        seconds = time.perf_counter() - t0
        values, best, curve = [], float("inf"), []
        steps = 0
        for t in study.trials:
            steps += int(t.user_attrs.get("steps", 0))
            if t.state.name == "COMPLETE":
                best = min(best, t.value)
            curve.append(best)
            values.append(t.value)
        curves[name] = curve
        values_of[name] = values
        b = study.best_trial
        s = {
            "best": b.value,
            "best_trial": b.number,
            "best_params": b.params,
            "steps": steps,
            "steps_without_pruning": args.trials * args.steps,
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "seconds": seconds,
        }
        summary["studies"][name] = s
        budget = args.trials * args.steps
        print(
            f"{name:>14}: best {b.value:.4f} at trial {b.number}, {s['pruned']} pruned, "
            f"{steps} steps of {budget} ({steps / budget:.0%}), "
            f"{seconds:.0f}s, {b.params}"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, curve) in enumerate(curves.items()):
        width = 4 - 1.2 * i  # an earlier curve drawn wider: equal curves stay visible
        ax.step(range(1, len(curve) + 1), curve, where="post", label=name, linewidth=width)
        x = [t + 1 for t, v in enumerate(values_of[name]) if v is not None]
        y = [v for v in values_of[name] if v is not None]
        right.plot(x, y, "o", label=name, alpha=0.7, markersize=8 - 2 * i)
    for a in (ax, right):
        a.axhline(default, color="gray", linestyle="--", label="default config")
        a.set_xlabel("trial")
        a.legend()
    ax.set_ylabel("best validation loss so far (nats/char)")
    right.set_ylabel("each trial's validation loss (pruned: its last evaluation)")
    ax.set_title(f"{args.trials} trials of {args.steps} steps, char LSTM 1x128 (seed {args.seed})")
    finite = [v for c in curves.values() for v in c if v != float("inf")] + [default]
    ax.set_ylim(min(finite) - 0.02, max(default, min(finite)) + 0.15)
    fig.tight_layout()
    fig.savefig(out / "best_so_far.png", dpi=100)
    print(f"plot: {out / 'best_so_far.png'}; summary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
