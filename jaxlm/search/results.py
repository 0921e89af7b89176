"""What a study found: the status table, ``best_config.py`` and the plots.

The table and the best trial come from Optuna's storage (``study.trials``,
``study.best_trial``, ``study.best_trials`` for the Pareto front); the plots are Optuna's own
matplotlib visualisations (``optuna.visualization.matplotlib``, the ``[search]`` extra), saved as
PNGs in ``plots/``; ``best_config.py`` is the base config with the best trial's parameters,
which ``python -m jaxlm.train --config=studies/x/best_config.py`` trains again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlm.errors import SearchError
from jaxlm.search import study as study_lib
from jaxlm.search.space import apply_params


def load_study(study_dir: str | Path) -> Any:
    """The ``optuna.Study`` in a study folder (read-only use: status, plots, best config).

    Raises:
      SearchError: the folder holds no study.
    """
    import optuna

    study_dir = Path(study_dir).absolute()
    settings = study_lib.read_settings(study_dir)
    if settings is None:
        raise SearchError(f"{study_dir}: no {study_lib.STUDY_FILE}; is this a study folder?")
    storage = study_lib.open_storage(study_dir, settings.storage)
    return optuna.load_study(study_name=settings.name, storage=storage)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(t: Any) -> str:
    if t.datetime_start is None:
        return "-"
    end = t.datetime_complete
    if end is None:
        return "running"
    seconds = (end - t.datetime_start).total_seconds()
    return f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.1f}m"


def best_validation_loss(t: Any, objectives: list[str]) -> float | None:
    """A trial's best validation loss: the lowest it reported at an evaluation, or its final
    whole-split value when that is an objective."""
    candidates = [v for v in t.intermediate_values.values() if math.isfinite(v)]
    if t.values is not None and "validation_loss" in objectives:
        candidates.append(t.values[objectives.index("validation_loss")])
    return min(candidates) if candidates else None


def status_table(study_dir: str | Path) -> str:
    """The trials table: number, state, parameters, best validation loss, steps, duration;
    the objectives' values, a ``*`` on the Pareto front (several objectives) or the best trial,
    and a last line with the best so far.

    Example:
      >>> print(status_table("studies/lstm"))  # doctest: +SKIP
      #  state     optimizer.learning_rate  model.dropout  best val loss  steps  duration  value
      0  COMPLETE  0.001                    0.1            2.71           60     12s       2.71 *
    """
    study_dir = Path(study_dir).absolute()
    settings = study_lib.read_settings(study_dir)
    study = load_study(study_dir)
    names = list(settings.space)
    trials = study.get_trials(deepcopy=False)
    objective_names = [o.name for o in settings.objectives]
    best = _best_numbers(study)
    header = ["#", "state", *names, "best val loss", "steps", "duration", *objective_names, ""]
    rows = [header]
    for t in trials:
        params = [_fmt(t.params.get(n, "-")) for n in names]
        bvl = best_validation_loss(t, objective_names)
        steps = t.user_attrs.get("steps")
        if steps is None and t.intermediate_values:
            steps = max(t.intermediate_values)
        values = [_fmt(v) for v in t.values] if t.values else ["-"] * len(objective_names)
        mark = "*" if t.number in best else ""
        rows.append(
            [
                str(t.number),
                t.state.name,
                *params,
                "-" if bvl is None else f"{bvl:.4f}",
                "-" if steps is None else str(steps),
                _duration(t),
                *values,
                mark,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    c = {}
    for t in trials:
        c[t.state.name] = c.get(t.state.name, 0) + 1
    lines.append("")
    lines.append(
        f"Study {settings.name}: {len(trials)} trials ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items()))
        + f"); sampler {settings.sampler}, pruner {settings.pruner}"
    )
    if best:
        if len(objective_names) == 1:
            b = study.best_trial
            lines.append(
                f"Best so far: trial {b.number}, {objective_names[0]} {b.value:.4f}, {b.params}"
            )
        else:
            lines.append(f"Pareto front ({' vs '.join(objective_names)}): trials {sorted(best)}")
    return "\n".join(lines)


def _best_numbers(study: Any) -> set[int]:
    """The best trial's number, or the Pareto front's (none while no trial completed)."""
    try:
        if len(study.directions) == 1:
            return {study.best_trial.number}
        return {t.number for t in study.best_trials}
    except ValueError:
        return set()


def best_trial(study: Any) -> Any:
    """The best completed trial; with several objectives, the Pareto-front trial best on the
    first objective.

    Raises:
      SearchError: no trial has completed yet.
    """
    try:
        if len(study.directions) == 1:
            return study.best_trial
        front = study.best_trials
    except ValueError:
        front = []
    if not front:
        raise SearchError(f"study {study.study_name}: no trial has completed yet")
    sign = 1 if study.directions[0].name == "MINIMIZE" else -1
    return min(front, key=lambda t: sign * t.values[0])


def write_best_config(study_dir: str | Path, study: Any = None) -> Path:
    """Writes ``best_config.py``: the base config with the best trial's parameters, named
    ``<config name>_<study>_best`` (so ``python -m jaxlm.train --config=...`` trains it in
    ``runs/<that name>``, away from the trial's own folder).

    Returns:
      The file's path.

    Raises:
      SearchError: no trial has completed yet.
    """
    study_dir = Path(study_dir).absolute()
    study = study if study is not None else load_study(study_dir)
    best = best_trial(study)
    base = study_lib.load_base_config(study_dir)
    config = apply_params(base, best.params)
    with config.unlocked():
        config.name = f"{config.name}_{study_dir.name}_best"
    names = [o.name for o in study_lib.read_settings(study_dir).objectives]
    values = dict(zip(names, best.values, strict=True))
    doc = (
        f"The best trial ({best.number}) of study {study_dir.name}: {values}; parameters "
        f"{best.params}.\n\nTrain it again: python -m jaxlm.train --config={study_dir}/"
        f"{study_lib.BEST_CONFIG_FILE}\n"
    )
    path = study_dir / study_lib.BEST_CONFIG_FILE
    study_lib.write_text_atomic(path, study_lib.config_source(config, doc))
    return path


def write_plots(study_dir: str | Path, study: Any = None) -> list[Path]:
    """Saves Optuna's matplotlib visualisations under ``plots/``: the optimisation history,
    the parameter importances and the intermediate values (one objective), or the Pareto
    front (several). A plot Optuna cannot draw yet (too few trials) is left out.

    Returns:
      The PNGs written.

    Raises:
      SearchError: matplotlib is not installed (the ``[search]`` extra).
    """
    import importlib.util
    import warnings

    if importlib.util.find_spec("matplotlib") is None:
        raise SearchError('plots need matplotlib: pip install -e ".[search]"')
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    study_dir = Path(study_dir).absolute()
    study = study if study is not None else load_study(study_dir)
    folder = study_dir / study_lib.PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    single = len(study.directions) == 1
    names = [o.name for o in study_lib.read_settings(study_dir).objectives]
    plots: dict[str, Callable[[], Any]] = {}
    if single:
        plots["optimization_history"] = lambda: vis.plot_optimization_history(study)
        plots["param_importances"] = lambda: vis.plot_param_importances(study)
        plots["intermediate_values"] = lambda: vis.plot_intermediate_values(study)
    else:
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=names[:3])
        for i, name in enumerate(names):
            plots[f"optimization_history_{name}"] = lambda i=i, name=name: (
                vis.plot_optimization_history(study, target=lambda t: t.values[i], target_name=name)
            )
    written = []
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's "experimental" warnings
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
                continue  # too few completed trials for this plot
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def write_report(
    study_dir: str | Path, *, study: Any = None, log: Callable[[str], None] = print
) -> None:
    """The end of a search: the status table, ``best_config.py`` and the plots."""
    study_dir = Path(study_dir).absolute()
    log(status_table(study_dir))
    try:
        path = write_best_config(study_dir, study)
        log(f"Best config: {path} (python -m jaxlm.train --config={path})")
    except SearchError as e:
        log(str(e))
    try:
        plots = write_plots(study_dir, study)
        if plots:
            log(f"Plots: {', '.join(str(p) for p in plots)}")
    except SearchError as e:
        log(str(e))
