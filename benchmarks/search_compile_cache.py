"""Time to the first step of trial 1 against trial 2 (and a repeat of trial 1's parameters),
each in a process of its own sharing the study's persistent compilation cache.

    python benchmarks/search_compile_cache.py [--repeats=3]

Makes a study on ``configs/lstm.py:smoke`` over the learning rate (the LSTM: the Transformer's
oneDNN-fused CPU executables cannot be written to the cache), asks trial 0 (lr 1e-3), trial 1
(lr 2e-3, the same shapes) and trial 2 (lr 1e-3 again, enqueued), and runs each with
``python -m jaxlm.search trial`` one after another, each study in a fresh folder (a cold cache).
Prints, per trial, the median over repeats of ``first_step_s`` (process start of the trial to
the end of its first step: corpus, init, compilation), the XLA compilations the cache did not
serve, the seconds of all (hits included), and the cache's hits, as the trials record them.
Trial 2 shows what a trial whose programs are all in the cache costs; trial 1 what a trial
with another learning rate costs: as the learning rate is an argument of the train step
(``jaxlm.train.hparams``), nothing either.
The machine may be shared: the times are rough, the counts exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = {
    "train.num_steps": 4,
    "train.eval_every": 2,
    "train.checkpoint_every": 4,
    "train.eval_steps": 1,
    "train.log_every": 2,
    "train.sample_tokens": 0,
}


def one_study(folder: Path) -> list[dict]:
    import optuna

    from jaxlm.config import load_config
    from jaxlm.search import apply_params, grid, prepare_study

    config = apply_params(load_config("lstm:smoke"), OVERRIDES)
    space = {"optimizer.learning_rate": grid([1e-3, 2e-3])}
    study, _, distributions = prepare_study(config, space, folder, sampler="grid")
    study.enqueue_trial({"optimizer.learning_rate": 1e-3})  # trial 0
    study.enqueue_trial({"optimizer.learning_rate": 2e-3})  # trial 1
    study.enqueue_trial({"optimizer.learning_rate": 1e-3})  # trial 2: trial 0 again
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        trial = study.ask(distributions)
        cmd = [sys.executable, "-m", "jaxlm.search", "trial", f"--study={folder}"]
        subprocess.run(
            [*cmd, f"--number={trial.number}"], check=True, env=env, stdout=subprocess.DEVNULL
        )
    study = optuna.load_study(study_name=study.study_name, storage=study._storage)
    return [t.user_attrs for t in study.trials]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_study(Path(tmp) / "cache_study"))
    names = ["trial 0 (lr 1e-3, cold cache)", "trial 1 (lr 2e-3)", "trial 2 (lr 1e-3 again)"]
    for i, name in enumerate(names):
        first = statistics.median(r[i]["first_step_s"] for r in runs)
        compile_s = statistics.median(r[i]["compile_s"] for r in runs)
        compiles = sorted({r[i]["compiles"] for r in runs})
        hits = sorted({r[i]["cache_hits"] for r in runs})
        print(
            f"{name:<30} first step {first:6.2f}s  compilations {compiles} ({compile_s:.2f}s)  "
            f"cache hits {hits}"
        )
    t0 = statistics.median(r[0]["first_step_s"] for r in runs)
    t1 = statistics.median(r[1]["first_step_s"] for r in runs)
    t2 = statistics.median(r[2]["first_step_s"] for r in runs)
    print(f"first-step time, trial 1 / trial 0: {t1 / t0:.2f}; trial 2 / trial 0: {t2 / t0:.2f}")


if __name__ == "__main__":
    main()
