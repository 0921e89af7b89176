"""Training: ``train_and_evaluate(config, workdir, hooks=())`` and its parts.

- :mod:`~jaxlm.train.loop`: setup, the loop, the final evaluation and report;
- :mod:`~jaxlm.train.steps`: the pure train and eval steps and their compilation;
- :mod:`~jaxlm.train.plan`: the mesh, shardings and ahead-of-time compiled step of a run, the
  memory and FLOPs they need, and ``dry_run(config)`` (``--dry_run``);
- :mod:`~jaxlm.train.hooks`: what the loop does besides stepping (metrics, evaluation,
  checkpoints, preemption), and the place for your own actions;
- :mod:`~jaxlm.train.evaluate`: evaluation as sums and counts, of a model or a saved run
  (``jaxlm.train.evaluate.evaluate``);
- :mod:`~jaxlm.train.workdir` and :mod:`~jaxlm.train.ngram`: the run folder and the n-gram run.

``python -m jaxlm.train --config=configs/lstm.py`` is the command line
(:mod:`jaxlm.train.__main__`).
"""

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__all__ = [
    "Checkpointer",
    "Chrono",
    "Evaluation",
    "Evaluator",
    "Hook",
    "MetricsBuffer",
    "Preempted",
    "Preemption",
    "Progress",
    "Stop",
    "default_workdir",
    "dry_run",
    "evaluate_run",
    "every",
    "jit_train_step",
    "make_eval_step",
    "make_train_step",
    "summarize",
    "train_and_evaluate",
]
_HOME = {
    **dict.fromkeys(["Evaluator", "evaluate_run", "summarize"], "jaxlm.train.evaluate"),
    **dict.fromkeys(
        [
            "Checkpointer",
            "Chrono",
            "Evaluation",
            "Hook",
            "MetricsBuffer",
            "Preemption",
            "Progress",
            "Stop",
            "every",
        ],
        "jaxlm.train.hooks",
    ),
    **dict.fromkeys(["Preempted", "train_and_evaluate"], "jaxlm.train.loop"),
    **dict.fromkeys(["jit_train_step", "make_eval_step", "make_train_step"], "jaxlm.train.steps"),
    "default_workdir": "jaxlm.train.workdir",
    "dry_run": "jaxlm.train.plan",
}
__getattr__, __dir__ = attach(
    __name__, _HOME, ("evaluate", "hooks", "loop", "ngram", "plan", "steps", "workdir")
)

if TYPE_CHECKING:
    from jaxlm.train.evaluate import Evaluator, evaluate_run, summarize
    from jaxlm.train.hooks import (
        Checkpointer,
        Chrono,
        Evaluation,
        Hook,
        MetricsBuffer,
        Preemption,
        Progress,
        Stop,
        every,
    )
    from jaxlm.train.loop import Preempted, train_and_evaluate
    from jaxlm.train.plan import dry_run
    from jaxlm.train.steps import jit_train_step, make_eval_step, make_train_step
    from jaxlm.train.workdir import default_workdir
