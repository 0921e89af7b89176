"""jaxlm.config: recipes from any folder, model-owned defaults, the whole config checked first."""

from __future__ import annotations

import math
import re

import ml_collections
import pytest

from jaxlm import config as cfg
from jaxlm.errors import ConfigError
from jaxlm.models import MODELS, model_defaults
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
        ("model.dropout", 1.5, r"config.model.dropout: expected a number in \[0, 1\), got 1.5"),
        ("model.embed_dim", 0, r"config.model.embed_dim: expected a positive integer, got 0"),
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
        ({"data.tokenizer": "wordpiece"}, "config.data.tokenizer: unknown tokenizer 'wordpiece'"),
        ({"data.tokenizer": "bpe"}, r"config.data.vocab_size: 0; a bpe tokenizer .* at least 257"),
        ({"data.tokenizer": "gpt2"}, "config.data.tokenizer_path: empty; the gpt2 tokenizer"),
        (
            {"data.tokenizer": "gpt2", "data.tokenizer_path": "/no/such/gpt2"},
            r"config.data.tokenizer_path: /no/such/gpt2 does not exist .*vocab.json \+ merges",
        ),
        ({"finetune.strategy": "most"}, "config.finetune.strategy: unknown strategy 'most'"),
        ({"optimizer.decay_mask": "none"}, "config.optimizer.decay_mask: 'none'"),
        ({"precision": "float8"}, "config.precision: unknown dtype 'float8'"),
        ({"monitor.on_event": "command"}, "config.monitor.command: empty, but"),
        ({"monitor.inject": "spike@x"}, "config.monitor.inject: 'spike@x' is not a fault"),
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


# What the walk below sets each field to: values outside its range (or of no use to it). A field
# of base_config that is neither here nor in EXEMPT fails the walk, so a new field gets a check.
NAN, INF = math.nan, math.inf
OUT_OF_RANGE = {
    "seed": [-1],
    "precision": ["float8"],
    "data.corpus": ["web"],
    "data.path": ["corpus.txt"],  # the default corpus, builtin, reads no files
    "data.split": [(0.9, 0.1, 0.0), (0.5, 0.5, 0.5), (1.0,)],
    "data.tokenizer": ["wordpiece"],
    "data.tokenizer_path": ["hf/gpt2"],  # the default tokenizer, char, reads no files
    "data.vocab_size": [-1],
    "data.min_count": [0],
    "data.batch_size": [0],
    "data.seq_len": [0],
    "data.eval_batch_size": [0],
    "data.augment.replace": [1.0, -0.1],
    "data.augment.delete": [1.0, NAN],
    "data.augment.insert": [1.5],
    "data.augment.swap": [-1.0],
    "data.augment.source": ["zipf"],
    "data.augment.unit": ["sentence"],
    "data.augment.extra": [-2, 1.5],
    "data.augment.word_table": [0, 2.5],
    "data.augment.word_tokens": [0],
    "data.windows": ["contiguous"],
    "data.mixture": ["builtin:0", "builtin", "builtin:0.5,nowhere.txt:0.5", ("builtin:1",)],
    "data.mixture_target": ["nowhere"],
    "data.resample.kind": ["jackknife"],
    "data.resample.unit": ["word"],
    "data.resample.factor": [0, 1.5],
    "data.resample.temperature": [0.0, -1.0, NAN],
    "optimizer.name": ["adamm"],
    "optimizer.learning_rate": [-1.0, 0.0, NAN, INF],
    "optimizer.schedule": ["cosin"],
    "optimizer.warmup_steps": [-1],
    "optimizer.end_lr_fraction": [1.5, NAN],
    "optimizer.decay_start_step": [0.5],
    "optimizer.decay_every": [0],
    "optimizer.decay_factor": [0.0, 1.5],
    "optimizer.clip_norm": [-1.0, NAN],
    "optimizer.weight_decay": [-0.1],
    "optimizer.decay_mask": ["none"],
    "optimizer.momentum": [1.0],
    "optimizer.b1": [1.0],
    "optimizer.b2": [-0.1],
    "optimizer.cut_frac": [0.0],
    "optimizer.stlr_ratio": [0.5],
    "optimizer.sgdr_period": [0],
    "optimizer.sgdr_mult": [0.5],
    "optimizer.steps_per_epoch": [-1],
    "optimizer.decay_after_epochs": [-1],
    "optimizer.plateau_factor": [1.0],
    "optimizer.plateau_patience": [-1],
    "optimizer.plateau_cooldown": [-1],
    "optimizer.nt_asgd_nonmono": [-1],
    "optimizer.accumulate_steps": [0],
    "optimizer.max_nonfinite": [0],
    "finetune.strategy": ["most"],
    "finetune.num_last_layers": [-1],
    "finetune.lr_factor": [0.0],
    "finetune.unfreeze_every": [-1],
    "finetune.discriminative_factor": [0.0],
    "finetune.clip_norm": [-1.0],
    "finetune.l2": [-1e-5],
    "finetune.dropout": [1.0],
    "parallel.strategy": ["zero3", "FSDP", "fsdp,tensor"],
    "parallel.data": [-1],
    "parallel.model": [0],
    "parallel.rules": [(("embed",),), (("[", (None, "model")),), "embed"],
    "train.num_steps": [0],
    "train.log_every": [0],
    "train.eval_every": [0],
    "train.eval_steps": [-1],
    "train.checkpoint_every": [0],
    "train.keep_checkpoints": [0],
    "train.sample_tokens": [-5],
    "train.sample_temperature": [-0.5, NAN],
    "train.label_smoothing": [1.0],
    "monitor.diagnostics_every": [-1, 2.5],
    "monitor.histograms_every": [-100, "often"],
    "monitor.peak_flops": [-1.0, float("nan")],
    "monitor.nonfinite": ["skip"],
    "monitor.spike_factor": [-1.0, NAN],
    "monitor.spike_policy": ["rewind"],
    "monitor.grad_factor": [-0.5],
    "monitor.grad_policy": ["ignore"],
    "monitor.spike_warmup": [-1],
    "monitor.spike_decay": [1.0],
    "monitor.spike_max_consecutive": [0],
    "monitor.max_rollbacks": [-1],
    "monitor.stall_seconds": [-1.0, INF],
    "monitor.gate_every": [-1],
    "monitor.gate_saturation": [0.0, 0.5],
    "monitor.gate_warn_fraction": [1.5],
    "monitor.on_event": ["email"],
    "monitor.inject": ["nan", "spike@0", "sleep@3", "nan@3:1", "boom@2"],
    # The model section, by field name, whichever models have the field.
    "model.name": ["lstmm"],
    "model.embed_dim": [0],
    "model.dropout": [1.5, -0.1, 1.0],
    "model.hidden_sizes": [(), (64, 0), 64],
    "model.input_dropout": [1.5],
    "model.hidden_dropout": [1.0],
    "model.embed_dropout": [1.0],
    "model.weight_drop": [1.0, (0.5, 1.0)],
    "model.gate_dropout_forget": [1.0, -0.1],
    "model.gate_dropout_output": [1.0],
    "model.gate_dropout_update": [1.5],
    "model.ar": [-1.0],
    "model.tar": [-1.0],
    "model.init_scale": [0.0],
    "model.num_layers": [0],
    "model.num_heads": [0],
    "model.mlp_dim": [-1],
    "model.max_len": [0],
    "model.attention_dropout": [1.0],
    "model.norm": ["batchnorm"],
    "model.positions": ["alibi"],
    "model.init_scheme": ["xavier", "GPT2"],
    "model.order": [0],
    "model.method": ["witten_bell"],
    "model.discount": [(-0.5,)],
    "model.discount_fallback": [(0.5, 1.0), (0.5, 1.0, 4.0)],
    "model.k": [0.0],
    "model.cutoffs": [(1,), (0, 2, 1), (0, -1)],
    "model.arpa_precision": ["float16", "f32"],
    "model.memory_limit": ["4XB", 0, 1.5, -1, True, "GB"],
    "model.tmp_dir": [3, None],
}
# Fields with no value out of range, and why.
EXEMPT = {
    "name": "free text: the run's name",
    "init_from": "a checkpoint path: the run checks it, right after validate",
    "data.data_dir": "a folder, created when missing",
    "train.sample_prompt": "free text",
    "monitor.command": "a shell command (checked against monitor.on_event: below)",
    **dict.fromkeys(
        [
            "optimizer.centralize",
            "optimizer.skip_nonfinite",
            "train.carry_state",
            "monitor.report",
            "model.locked_dropout",
            "model.tie_embeddings",
            "model.remat",
            "model.add_bos",
            "model.write_arpa",
        ],
        "a boolean: both values are valid",
    ),
}


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """The dotted names of every leaf field."""
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _fields(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _with(config: ml_collections.ConfigDict, dotted: str, value) -> ml_collections.ConfigDict:
    """A copy with one field set to any value, of any type (as a config read from JSON can be)."""
    tree = config.to_dict()
    *sections, field = dotted.split(".")
    holder = tree
    for section in sections:
        holder = holder[section]
    holder[field] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize("model", MODELS)
def test_every_field_out_of_range_is_refused_by_name(model):
    every = {f for name in MODELS for f in _fields(cfg.base_config(name))}
    assert set(OUT_OF_RANGE) | set(EXEMPT) <= every  # no stale entry
    assert not set(OUT_OF_RANGE) & set(EXEMPT)
    config = cfg.base_config(model)
    cfg.validate(config)  # the defaults pass: each error below is the one value's
    fields = _fields(config)
    unchecked = [f for f in fields if f not in OUT_OF_RANGE and f not in EXEMPT]
    assert not unchecked, f"fields with no out-of-range value and no exemption: {unchecked}"
    for dotted in fields:
        for value in OUT_OF_RANGE.get(dotted, ()):
            with pytest.raises(ConfigError) as e:
                cfg.validate(_with(config, dotted, value))
            assert re.match(rf"config\.{re.escape(dotted)}\b", str(e.value)), (dotted, value)


@pytest.mark.parametrize(
    "model, fields, message",
    [
        (
            "transformer",
            {"positions": "rotary", "embed_dim": 6, "num_heads": 2},
            r"config.model.embed_dim=6 over config.model.num_heads=2 gives heads 3 wide",
        ),
        (
            "transformer",
            {"max_len": 16},  # the window, data.seq_len, is 128
            r"config.data.seq_len=128 exceeds config.model.max_len=16",
        ),
        (
            "lstm",
            {"weight_drop": (0.5,)},
            r"config.model.weight_drop: 1 values for the 2 layers",
        ),
        (
            "gru",
            {"gate_dropout_forget": 0.2},
            r"config.model.gate_dropout_forget=0.2: a gru cell has no forget gate to drop "
            r"\(gate dropout applies to: update for gru",
        ),
        (
            "rnn",
            {"gate_dropout_update": 0.2},
            r"config.model.gate_dropout_update=0.2: a rnn cell has no update gate .*none for rnn",
        ),
        (
            "ngram",
            {"method": "kneser_ney", "discount": (1.5,)},
            r"config.model.discount: 1.5 is outside \[0, 1\] for kneser_ney",
        ),
        (
            "ngram",
            {"discount": (0.5, 1.0, 3.5)},
            r"config.model.discount: 3.5 is outside \[0, 3\] for modified_kneser_ney",
        ),
    ],
)
def test_fields_whose_range_depends_on_another_are_refused(model, fields, message):
    config = cfg.base_config(model)
    for field, value in fields.items():  # weight_drop's float default refuses a tuple in place
        config = _with(config, f"model.{field}", value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate(config)
    # A rotary model may attend past max_len (no position table); an even head width is fine.
    config = cfg.base_config("transformer")
    config.model.update({"positions": "rotary", "max_len": 16, "embed_dim": 8, "num_heads": 2})
    cfg.validate(config)


def test_the_strategy_names_are_the_sharding_modules():
    from jaxlm import sharding

    assert cfg.base_config().parallel.strategy == "data"
    for name in sharding.STRATEGIES:
        config = cfg.base_config("transformer")
        config.parallel.update({"strategy": name, "model": 2})
        cfg.validate(config)
    with pytest.raises(ConfigError, match=r"config.parallel.strategy: expected one of \('data'"):
        cfg.validate(_with(cfg.base_config(), "parallel.strategy", "zero"))


@pytest.mark.parametrize(
    "model, fields, message",
    [
        (
            "transformer",
            {"parallel.strategy": "tensor", "parallel.model": 3},
            r"config.parallel.model=3 does not divide config.model.num_heads=4: the 'tensor'",
        ),
        (
            "transformer",
            {"parallel.strategy": "fsdp+tensor", "parallel.model": 4, "model.mlp_dim": 6},
            r"config.parallel.model=4 does not divide config.model.mlp_dim=6",
        ),
        (
            "lstm",
            {"parallel.strategy": "tensor", "parallel.model": 4, "model.hidden_sizes": (64, 30)},
            r"config.parallel.model=4 does not divide config.model.hidden_sizes\[1\]=30",
        ),
        (
            "gru",
            {"parallel.strategy": "tensor"},
            r"config.parallel.strategy: 'tensor' splits layers over the \"model\" axis; set "
            r"config.parallel.model",
        ),
        (
            "ngram",
            {"parallel.strategy": "fsdp"},
            r"config.parallel.strategy: 'fsdp' shards parameters, but an n-gram model",
        ),
    ],
)
def test_strategies_that_do_not_fit_the_model_are_refused(model, fields, message):
    config = cfg.base_config(model)
    for dotted, value in fields.items():
        config = _with(config, dotted, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate(config)
