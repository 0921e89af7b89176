"""jaxlm.config: recipes from any folder, model-owned defaults, the whole config checked first."""

from __future__ import annotations

import pytest

from jaxlm import config as cfg
from jaxlm.errors import ConfigError
from jaxlm.models import model_defaults
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import ROOT, smoke


def test_recipes_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfg.load_config("lstm:smoke").train.num_steps == 60
    assert cfg.load_config("configs/lstm.py:smoke").name == "lstm_smoke"  # as the README says
    assert cfg.load_config(str(ROOT / "configs/transformer.py")).model.name == "transformer"
    assert set(cfg.recipes()) >= {"gru", "lstm", "ngram", "ptb", "rnn", "transformer"}
    assert (
        cfg.resolve_config_arg("--config=gru:smoke") == f"--config={cfg.RECIPES_DIR}/gru.py:smoke"
    )
    assert cfg.resolve_config_arg("--workdir=x") == "--workdir=x"
    with pytest.raises(ConfigError, match="config file not found: nope.py .*lstm"):
        cfg.load_config("nope.py")
    with pytest.raises(ConfigError, match="configs/lstm.py: unknown variant 'nope'"):
        cfg.load_config("lstm:nope")


def test_the_model_section_is_the_models_own_fields_at_its_defaults():
    for name in ("lstm", "transformer", "ngram"):
        model = cfg.base_config(name).model
        assert model.name == name and dict(model) == {"name": name, **model_defaults(name)}
    assert "hidden_sizes" not in cfg.base_config("transformer").model
    assert "num_heads" not in cfg.base_config("lstm").model
    # The recipes state what they use; their behaviour is that of the old shared defaults.
    assert cfg.load_config("lstm").model.dropout == 0.1
    assert cfg.load_config("transformer").model.dropout == 0.1


def test_unknown_model_and_optimizer_names(tmp_path):
    with pytest.raises(ValueError, match="config.model.name: unknown model 'lstmm'"):
        train_and_evaluate(smoke(**{"model.name": "lstmm"}), tmp_path / "a")
    with pytest.raises(ValueError, match="config.optimizer.name: unknown optimizer 'adamm'"):
        train_and_evaluate(smoke(**{"optimizer.name": "adamm"}), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.hidden_sizes", ("abc",), "config.model.hidden_sizes: expected a tuple"),
        ("data.batch_size", 0, "config.data.batch_size: expected a positive integer"),
        ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate: expected a positive"),
        ("train.eval_steps", -1, r"config.train.eval_steps: expected an integer >= 0, got -1"),
        ("train.sample_tokens", -5, r"config.train.sample_tokens: expected an integer >= 0"),
        (
            "optimizer.accumulate_steps",
            0,
            r"config.optimizer.accumulate_steps: expected a positive integer \(1: no accumulation"
            r"\), got 0",
        ),
    ],
)
def test_bad_field_values_are_named(tmp_path, field, value, message):
    config = smoke()
    config.unlock()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.schedule": "cosin"}, "config.optimizer.schedule: unknown schedule 'cosin'"),
        ({"data.path": "../shared/data/ptb"}, "config.data.path is '../shared/data/ptb' but"),
        ({"data.tokenizer": "bpe"}, "config.data.tokenizer: unknown tokenizer 'bpe'"),
        ({"finetune.strategy": "most"}, "config.finetune.strategy: unknown strategy 'most'"),
        ({"optimizer.decay_mask": "none"}, "config.optimizer.decay_mask: 'none'"),
        ({"precision": "float8"}, "config.precision: unknown dtype 'float8'"),
        ({"init_from": "runs/never"}, "config.init_from: .*runs/never does not exist"),
        (
            {"data.corpus": "text_files", "data.path": "/no/such/ptb"},
            "config.data.path: /no/such/ptb does not exist",
        ),
    ],
)
def test_the_whole_config_is_checked_before_any_work(tmp_path, overrides, message):
    config = smoke(**overrides)
    if "init_from" not in overrides:  # the run checks that one, right after validate
        with pytest.raises(ConfigError, match=message):
            cfg.validate(config)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was prepared, built or written


def test_a_transformer_whose_width_does_not_divide_into_its_heads_is_refused():
    config = cfg.load_config("transformer:smoke")
    config.model.num_heads = 3
    with pytest.raises(ConfigError, match="embed_dim=32 does not divide into .*num_heads=3"):
        cfg.validate(config)
