"""Search spaces: entries, space files and overrides, checks against the config, Optuna."""

from __future__ import annotations

import optuna
import pytest

from jaxlm.config import load_config
from jaxlm.errors import ConfigError, SearchError
from jaxlm.search import space as sp


@pytest.fixture(scope="module")
def base():
    return load_config("lstm:smoke")


@pytest.mark.parametrize(
    "text, kind, low, high",
    [
        ("loguniform:1e-4:1e-2", "loguniform", 1e-4, 1e-2),
        ("uniform:0:0.5", "uniform", 0.0, 0.5),
        ("int:1:4", "int", 1, 4),
    ],
)
def test_parse_bounds(text, kind, low, high):
    d = sp.parse_entry(text)
    assert (d.kind, d.low, d.high) == (kind, low, high)
    assert sp.parse_entry(d.describe()) == d  # what study.json records reads back the same


def test_parse_values():
    assert sp.parse_entry("choice:[(64, 64), (128, 128)]").values == ((64, 64), (128, 128))
    assert sp.parse_entry("grid:1e-3,3e-3").values == (1e-3, 3e-3)


@pytest.mark.parametrize(
    "text, said",
    [
        ("uniform:0.5:0.1", "expected low < high"),
        ("loguniform:0:1", "0 < low"),
        ("normal:0:1", "unknown distribution 'normal'"),
        ("uniform:0", "expected uniform:LOW:HIGH"),
        ("grid:", "non-empty list"),
        ("choice:[1, 1]", "given twice"),
        ("int:1.5:3", "expected integers"),
    ],
)
def test_parse_errors(text, said):
    with pytest.raises(SearchError, match="--space.x: .*" + said.replace("(", r"\(")):
        sp.parse_entry(text, "--space.x")


def test_load_space_file_and_overrides():
    space = sp.load_space("configs/search/lstm.py:grid", {"optimizer.weight_decay": "grid:0.0,0.1"})
    assert list(space) == ["optimizer.learning_rate", "model.dropout", "optimizer.weight_decay"]
    assert space["optimizer.learning_rate"].values == (1e-3, 3e-3, 1e-2)
    assert sp.load_space(None, {"model.dropout": "uniform:0:0.2"})["model.dropout"].high == 0.2
    with pytest.raises(SearchError, match="space file not found: nope.py"):
        sp.load_space("nope.py")


def test_load_space_rejects_non_distributions(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def get_space(arg=None):\n    return {'model.dropout': 0.1}\n")
    with pytest.raises(SearchError, match=r"bad.py: model.dropout is 0.1, expected a distribution"):
        sp.load_space(str(f))


def test_check_space_errors(base):
    with pytest.raises(SearchError, match="the search space is empty"):
        sp.check_space({}, base)
    with pytest.raises(SearchError, match="unknown config field model.dropuot.*model.dropout"):
        sp.check_space({"model.dropuot": sp.uniform(0, 0.5)}, base, "s.py")
    with pytest.raises(SearchError, match=r"s.py: model.dropout = 1.5 .* refused by the config"):
        sp.check_space({"model.dropout": sp.uniform(0, 1.5)}, base, "s.py")
    with pytest.raises(SearchError, match="train.num_steps = 0"):
        sp.check_space({"train.num_steps": sp.integer(0, 10)}, base)
    sp.check_space(sp.load_space("lstm"), base)  # the shipped spaces pass


def test_apply_params(base):
    c = sp.apply_params(
        base,
        {"optimizer.learning_rate": 0.02, "model.hidden_sizes": "(32, 32)", "train.num_steps": 7},
    )
    assert (c.optimizer.learning_rate, c.model.hidden_sizes, c.train.num_steps) == (
        0.02,
        (32, 32),
        7,
    )
    assert base.optimizer.learning_rate != 0.02 and base.model.hidden_sizes == (64, 64)
    with pytest.raises(ConfigError, match="config.model.dropout: expected a number in"):
        sp.apply_params(base, {"model.dropout": 1.0})
    with pytest.raises(ConfigError, match="unknown config field optimizer.lr"):
        sp.apply_params(base, {"optimizer.lr": 0.1})


def test_to_distributions():
    space = {
        "optimizer.learning_rate": sp.loguniform(1e-4, 1e-2),
        "model.dropout": sp.uniform(0, 0.5),
        "train.num_steps": sp.integer(10, 20, 5),
        "model.hidden_sizes": sp.choice([(64,), (128,)]),
    }
    d = sp.to_distributions(space)
    assert d["optimizer.learning_rate"] == optuna.distributions.FloatDistribution(
        1e-4, 1e-2, log=True
    )
    assert d["train.num_steps"] == optuna.distributions.IntDistribution(10, 20, step=5)
    # tuples travel through the storage as their repr; apply_params reads them back
    assert d["model.hidden_sizes"].choices == ("(64,)", "(128,)")
    assert sp.grid_space({"train.num_steps": sp.integer(10, 20, 5)}) == {
        "train.num_steps": [10, 15, 20]
    }
    with pytest.raises(SearchError, match="--sampler=grid needs finite values.*loguniform"):
        sp.to_distributions(space, "grid")
