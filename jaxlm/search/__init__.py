"""Hyperparameter search through Optuna: ``python -m jaxlm.search`` and its pieces.

- :mod:`~jaxlm.search.space`: search spaces (``loguniform``, ``uniform``, ``integer``,
  ``choice``, ``grid``), space files, their Optuna distributions (``to_distributions``) and
  ``apply_params(config, params)``;
- :mod:`~jaxlm.search.study`: the study folder, storage, samplers, pruners and objectives;
- :mod:`~jaxlm.search.trial`: ``PruningHook`` (a loop hook that reports to an Optuna trial and
  stops a pruned run) and ``run_trial`` (one trial as a resumable run folder);
- :mod:`~jaxlm.search.driver`: ``search(config, space, study_dir, ...)``, the loop;
- :mod:`~jaxlm.search.results`: ``status_table``, ``write_best_config``, ``write_plots``.

Example::

    import jaxlm
    from jaxlm.search import grid, search

    space = {"optimizer.learning_rate": grid([1e-3, 3e-3]), "model.dropout": grid([0.0, 0.2])}
    study = search(jaxlm.load_config("lstm:smoke"), space, "studies/smoke", sampler="grid")
    print(study.best_params)
"""

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__all__ = [
    "Distribution",
    "PruningHook",
    "apply_params",
    "check_space",
    "choice",
    "grid",
    "int_",
    "integer",
    "load_space",
    "loguniform",
    "prepare_study",
    "run_trial",
    "search",
    "status_table",
    "to_distributions",
    "uniform",
    "write_best_config",
    "write_plots",
]
_HOME = {
    **dict.fromkeys(
        [
            "Distribution",
            "apply_params",
            "check_space",
            "choice",
            "grid",
            "int_",
            "integer",
            "load_space",
            "loguniform",
            "to_distributions",
            "uniform",
        ],
        "jaxlm.search.space",
    ),
    **dict.fromkeys(["PruningHook", "run_trial"], "jaxlm.search.trial"),
    **dict.fromkeys(["prepare_study", "search"], "jaxlm.search.driver"),
    **dict.fromkeys(["status_table", "write_best_config", "write_plots"], "jaxlm.search.results"),
}
__getattr__, __dir__ = attach(
    __name__, _HOME, ("driver", "population", "results", "space", "study", "trial")
)

if TYPE_CHECKING:
    from jaxlm.search.driver import prepare_study, search
    from jaxlm.search.results import status_table, write_best_config, write_plots
    from jaxlm.search.space import (
        Distribution,
        apply_params,
        check_space,
        choice,
        grid,
        int_,
        integer,
        load_space,
        loguniform,
        to_distributions,
        uniform,
    )
    from jaxlm.search.trial import PruningHook, run_trial
