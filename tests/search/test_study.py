"""The study folder and the driver in this process: a study refuses another config or space
and loses nothing, options are checked first, SQLite storage with two objectives and the Pareto
front, the pruning hook in a real run, the best config."""

from __future__ import annotations

import importlib.util

import optuna
import pytest

from jaxlm.checkpoints import load_run
from jaxlm.config import load_config, validate
from jaxlm.errors import SearchError
from jaxlm.search import PruningHook, grid, prepare_study, results, search, uniform
from jaxlm.search import study as study_lib
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import smoke

TINY = {
    "train.num_steps": 4,
    "train.eval_every": 2,
    "train.checkpoint_every": 2,
    "train.eval_steps": 1,
    "train.log_every": 2,
    "train.sample_tokens": 0,
    "data.eval_batch_size": 64,
}
SPACE = {"model.dropout": grid([0.0, 0.1])}


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_study_refuses_another_config_or_space_and_keeps_everything(tmp_path):
    folder = tmp_path / "s"
    prepare_study(smoke(**TINY), SPACE, folder, config_spec="lstm:smoke", sampler="grid")
    before = snapshot(folder)
    assert {"study.json", "base_config.py", "journal.log"} <= {str(p) for p in before}
    other = smoke(**{**TINY, "optimizer.learning_rate": 0.5})
    with pytest.raises(SearchError, match="holds a study made with another base config"):
        prepare_study(other, SPACE, folder, config_spec="other", sampler="grid")
    with pytest.raises(SearchError, match="another search space"):
        prepare_study(smoke(**TINY), {"model.dropout": grid([0.2])}, folder, sampler="grid")
    with pytest.raises(SearchError, match="another sampler: grid there, random now"):
        prepare_study(smoke(**TINY), SPACE, folder, sampler="random")
    assert snapshot(folder) == before
    prepare_study(smoke(**TINY), SPACE, folder, sampler="grid")  # the same: joins it
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(SearchError, match="holds no study.*not empty"):
        prepare_study(smoke(**TINY), SPACE, junk)
    assert (junk / "notes.txt").read_text() == "mine"


def test_processes_sharing_a_grid_study_ask_each_point_once(tmp_path):
    # two searches on one folder (as two processes running the same command), asking in turn
    space = {
        "optimizer.learning_rate": grid([1e-3, 3e-3, 1e-2]),
        "model.dropout": grid([0.0, 0.1, 0.2]),
    }
    folder = tmp_path / "g"
    first, _, dists = prepare_study(smoke(**TINY), space, folder, sampler="grid")
    first.ask(dists)  # trial 0, still running when the second process joins
    second, _, _ = prepare_study(smoke(**TINY), space, folder, sampler="grid")
    for i in range(8):
        (first if i % 2 else second).ask(dists)
    points = [tuple(sorted(t.params.items())) for t in first.get_trials()]
    assert len(points) == 9 and len(set(points)) == 9


def test_options_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    base = smoke(**TINY)
    with pytest.raises(SearchError, match="prunes single-objective studies only"):
        prepare_study(base, SPACE, folder, pruner="median", objectives="validation_loss,params")
    with pytest.raises(SearchError, match="the objective must be validation_loss"):
        prepare_study(base, SPACE, folder, pruner="median", objectives="tokens_per_s")
    with pytest.raises(SearchError, match="--sampler=grid needs finite values"):
        prepare_study(base, {"model.dropout": uniform(0, 0.5)}, folder, sampler="grid")
    with pytest.raises(SearchError, match="--sampler=sobol: expected one of"):
        prepare_study(base, SPACE, folder, sampler="sobol")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        study_lib.importlib.util, "find_spec", lambda n: None if n == "torch" else real(n)
    )
    with pytest.raises(
        SearchError, match=r'--sampler=gp needs the torch package: pip install -e "\.\[search-gp\]"'
    ):
        prepare_study(base, SPACE, folder, sampler="gp")
    assert not folder.exists()


@pytest.mark.parametrize("name", ["grid", "random", "tpe", "gp", "cmaes", "nsga2"])
def test_every_sampler_samples_our_distributions(name):
    # Optuna's samplers on the Optuna distributions of a space, with a made-up objective: each
    # asks values inside the space, and apply_params takes them
    from jaxlm.search import apply_params, choice, loguniform, to_distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"optimizer.learning_rate": loguniform(1e-4, 1e-2), "model.dropout": uniform(0, 0.5)}
    if name == "grid":
        space = {"optimizer.learning_rate": grid([1e-3, 1e-2]), "model.dropout": grid([0.0, 0.2])}
    elif name not in ("cmaes", "gp"):  # CMA-ES and the GP sample the numeric entries
        space["model.hidden_sizes"] = choice([(16,), (32, 32)])
    if name in ("gp", "cmaes"):  # their extras: torch, cmaes
        pytest.importorskip("torch" if name == "gp" else "cmaes")
    distributions = to_distributions(space, name)
    sampler = study_lib.make_sampler(name, seed=0, grid=sp_grid(space, name))
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(sampler=sampler, storage=storage)
    # told through a study of their own, as the search's trials are
    teller = optuna.load_study(study_name=study.study_name, storage=storage)
    base = smoke()
    for _ in range(4):
        trial = study.ask(distributions)
        config = apply_params(base, trial.params)
        assert 1e-4 <= config.optimizer.learning_rate <= 1e-2
        assert 0 <= config.model.dropout <= 0.5
        teller.tell(trial.number, config.optimizer.learning_rate + config.model.dropout)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4


def sp_grid(space, name):
    from jaxlm.search.space import grid_space

    return grid_space(space) if name == "grid" else None


def test_objectives():
    objs = study_lib.parse_objectives("validation_loss,tokens_per_s,params:max")
    assert objs == [
        study_lib.Objective("validation_loss", "minimize"),
        study_lib.Objective("train_tokens_per_s", "maximize"),
        study_lib.Objective("param_count", "maximize"),
    ]
    with pytest.raises(SearchError, match="expected NAME, NAME:min or NAME:max"):
        study_lib.parse_objectives("loss:up")
    with pytest.raises(SearchError, match="unknown metric 'perplexity'"):
        study_lib.parse_objectives("perplexity")


@pytest.mark.heavy
def test_two_objectives_on_sqlite_pareto_front_and_best_config(tmp_path):
    import jax

    folder = tmp_path / "multi"
    space = {"model.hidden_sizes": grid([(16,), (32,)])}
    cache_before = jax.config.jax_compilation_cache_dir
    study = search(
        smoke(**TINY),
        space,
        folder,
        sampler="grid",
        objectives="validation_loss,params",
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        log=lambda _: None,
    )
    assert not (folder / "journal.log").exists() and (tmp_path / "study.db").exists()
    assert any((folder / "xla_cache").iterdir())  # the trials used the study's cache
    assert jax.config.jax_compilation_cache_dir == cache_before  # and gave JAX back
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    counts = {t.params["model.hidden_sizes"]: t.values[1] for t in trials}
    assert counts["(16,)"] < counts["(32,)"]  # the parameter count is the second objective
    for t in trials:
        assert t.values[1] == t.user_attrs["param_count"]
        # a trial folder is an ordinary run: the run tools read it
        run = load_run(folder / "trials" / str(t.number))
        assert run.config.model.hidden_sizes == eval(t.params["model.hidden_sizes"])
    table = results.status_table(folder)
    assert "Pareto front (validation_loss vs param_count): trials" in table
    front = {t.number for t in study.best_trials}
    best = results.best_trial(study)
    assert best.number in front
    config = load_config(str(folder / "best_config.py"))
    validate(config)
    assert config.model.hidden_sizes == eval(best.params["model.hidden_sizes"])
    assert config.name == "lstm_smoke_multi_best"
    assert (folder / "plots" / "pareto_front.png").exists()
    again = train_and_evaluate(config, tmp_path / "again")  # what python -m jaxlm.train does
    assert again["validation_loss"] == pytest.approx(best.values[0], abs=1e-6)


def test_pruning_hook_stops_the_run_and_keeps_its_checkpoint(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    hook = PruningHook(trial)
    config = smoke(**{**TINY, "train.num_steps": 6})
    final = train_and_evaluate(config, tmp_path / "run", hooks=[hook])
    assert hook.pruned and final["step"] == 2  # the first evaluation's loss is above 1.0
    assert "pruned by Optuna at step 2" in final["stop_reason"]
    assert study.trials[0].intermediate_values == {2: hook.last[1]}
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert '"state": "stopped"' in (tmp_path / "run" / "status.json").read_text()


# Slow: test_population.py::test_search_population_asks_n_trains_them_together_and_tells_n
# trains a population of trials; this goes through the search driver's flag.
@pytest.mark.slow
def test_population_flag_trains_its_trials_in_one_population(tmp_path):
    space = {"optimizer.learning_rate": uniform(1e-3, 1e-2)}
    study = search(smoke(**TINY), space, tmp_path / "p", sampler="random", population=2, trials=2)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    assert done[0].params != done[1].params
    assert all(t.value is not None and t.value > 0 for t in done)
    assert (tmp_path / "p" / "populations").is_dir()
