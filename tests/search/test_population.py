"""jaxlm.search.population: N members in one vmapped step train as N solo runs would, a pruned
member stops, PBT exchanges members in the graph, and a population resumes exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import checkpoints
from jaxlm.errors import ConfigError
from jaxlm.search import population
from jaxlm.train import train_and_evaluate
from tests.helpers import smoke, train_losses

SHORT = {
    "train.num_steps": 20,
    "train.log_every": 5,
    "train.eval_every": 5,
    "train.eval_steps": 4,
    "train.checkpoint_every": 10,
    "train.sample_tokens": 0,
}
MEMBERS = [
    {"optimizer.learning_rate": 2e-3, "model.dropout": 0.1},
    {"optimizer.learning_rate": 6e-3, "model.dropout": 0.25},
    {"optimizer.learning_rate": 1e-3, "model.dropout": 0.05},
]


def rows(workdir, split: str, member: int) -> list[tuple[int, float]]:
    lines = (workdir / population.METRICS_FILE).read_text().splitlines()
    return [
        (r["step"], r["loss"])
        for r in map(json.loads, lines)
        if r["split"] == split and r["member"] == member
    ]


def test_a_member_trains_as_its_solo_run_and_a_pruned_member_stops(tmp_path):
    config = smoke(**SHORT)

    def prune(step, losses, active):
        return np.asarray([False, False, step == 5])  # member 2 out at the first evaluation

    result = population.train_population(config, MEMBERS, tmp_path / "pop", prune=prune)
    solo = smoke(**SHORT, **MEMBERS[1])
    final = train_and_evaluate(solo, tmp_path / "solo")
    ours, theirs = rows(tmp_path / "pop", "train", 1), train_losses(tmp_path / "solo")
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [5, 10, 15, 20]
    np.testing.assert_allclose([x for _, x in ours], [x for _, x in theirs], atol=1e-5)
    solo_eval = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "solo/metrics.jsonl").read_text().splitlines())
        if r["split"] == "eval"
    ]
    np.testing.assert_allclose(
        [x for _, x in rows(tmp_path / "pop", "eval", 1)], solo_eval, atol=1e-5
    )
    np.testing.assert_allclose(result.validation_loss[1], final["validation_loss"], atol=1e-5)
    # The pruned member's parameters stopped at step 5: its later evaluations are that one's,
    # while a member still training moves.
    pruned = [x for _, x in rows(tmp_path / "pop", "eval", 2)]
    training = [x for _, x in rows(tmp_path / "pop", "eval", 0)]
    assert len(pruned) == 3 and pruned[0] == pruned[1] == pruned[2]
    assert training[0] != training[1] != training[2]
    assert result.active == [True, True, False] and result.pruned_at == [None, None, 5]
    assert result.best_eval_loss[2] == pytest.approx(pruned[0], abs=1e-6)


@pytest.mark.heavy
def test_pbt_population_resumes_exactly(tmp_path):
    config = smoke(**SHORT)
    members = [{"optimizer.learning_rate": lr} for lr in (1e-3, 2e-3, 4e-3, 8e-3)]
    whole = population.train_population(config, members, tmp_path / "whole", pbt=True)
    cut = population.train_population(
        config, members, tmp_path / "cut", pbt=True, stop_after=12, final_evaluation=False
    )
    assert cut.step == 12
    resumed = population.train_population(config, members, tmp_path / "cut", pbt=True)
    assert resumed.validation_loss == whole.validation_loss
    assert resumed.hparams == whole.hparams and resumed.evaluations == whole.evaluations
    for m in range(4):
        assert rows(tmp_path / "cut", "train", m) == rows(tmp_path / "whole", "train", m)
    a, _ = checkpoints.load_state(tmp_path / "whole")
    b, _ = checkpoints.load_state(tmp_path / "cut")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # PBT moved the worst member's learning rate to a multiple of the best one's.
    start = {m["optimizer.learning_rate"] for m in members}
    assert {round(h["optimizer.learning_rate"], 9) for h in whole.hparams} != start
    # Another population in the same folder is refused, and nothing there is touched.
    with pytest.raises(ConfigError, match="holds another population"):
        population.train_population(config, members[:2], tmp_path / "whole")


def test_exploit_and_explore_copies_the_best_quarter_into_the_worst():
    n = 8
    pop = {
        "state": {"w": jnp.arange(n, dtype=jnp.float32)},
        "hparams": {
            "optimizer.learning_rate": jnp.arange(1, n + 1, dtype=jnp.float32),
            "model.dropout": jnp.full(n, 0.9),
        },
    }
    losses = jnp.asarray([5.0, 1.0, 7.0, 2.0, 8.0, 3.0, 4.0, 6.0])  # best 1, 3; worst 4, 2
    out = population.exploit_and_explore(pop, losses, jax.random.key(3))
    again = population.exploit_and_explore(pop, losses, jax.random.key(3))
    assert out["state"]["w"].tolist() == [0, 1, 3, 3, 1, 5, 6, 7]  # 4 <- 1 (best), 2 <- 3
    lr = np.asarray(out["hparams"]["optimizer.learning_rate"])
    assert lr[4] / 2.0 in (pytest.approx(0.8), pytest.approx(1.25))
    assert lr[2] / 4.0 in (pytest.approx(0.8), pytest.approx(1.25))
    keep = [0, 1, 3, 5, 6, 7]
    assert lr[keep].tolist() == np.arange(1, n + 1)[keep].tolist()
    assert float(jnp.max(out["hparams"]["model.dropout"])) <= 0.95  # rates stay below 1
    np.testing.assert_array_equal(lr, again["hparams"]["optimizer.learning_rate"])
    # Only the hyperparameters the members vary are perturbed; the rest are copied.
    only_lr = population.exploit_and_explore(
        pop, losses, jax.random.key(3), perturb=["optimizer.learning_rate"]
    )
    np.testing.assert_allclose(only_lr["hparams"]["model.dropout"], 0.9)
    np.testing.assert_array_equal(only_lr["hparams"]["optimizer.learning_rate"], lr)


def test_a_field_that_changes_shapes_cannot_vary():
    with pytest.raises(ConfigError, match="model.hidden_sizes changes the shapes"):
        population.member_configs(smoke(), [{"model.hidden_sizes": 32}])
    with pytest.raises(ConfigError, match="no members"):
        population.member_configs(smoke(), [])
    with pytest.raises(ConfigError, match="config.model.dropout"):
        population.member_configs(smoke(), [{"model.dropout": 1.5}])


def test_search_population_asks_n_trains_them_together_and_tells_n(tmp_path):
    optuna = pytest.importorskip("optuna")
    config = smoke(**SHORT)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    distributions = {
        "optimizer.learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True),
        "model.dropout": optuna.distributions.FloatDistribution(0.0, 0.3),
    }
    results = population.search_population(
        study, config, distributions, tmp_path, n=2, pbt=False, trials=2
    )
    trials = study.get_trials()
    assert len(results) == 1 and [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert [t.value for t in trials] == results[0].validation_loss
    assert all(t.user_attrs["population"] == str(tmp_path / "populations/0") for t in trials)
    # The members were the trials' parameters.
    saved = json.loads((tmp_path / "populations/0/run" / population.MEMBERS_FILE).read_text())
    assert saved["members"] == [t.params for t in trials]
    # Enough trials: a second call runs nothing.
    assert (
        population.search_population(
            study, config, distributions, tmp_path, n=2, pbt=False, trials=2
        )
        == []
    )
    with pytest.raises(ConfigError, match="model.embed_dim changes the shapes"):
        population.search_population(
            study,
            config,
            {"model.embed_dim": optuna.distributions.IntDistribution(8, 16)},
            tmp_path,
            n=2,
            pbt=False,
            trials=4,
        )
