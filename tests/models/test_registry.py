"""The model registry: names, defaults from the model classes, partial configs, errors."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.models import MODELS, get_model, model_defaults
from jaxlm.models.ngram import NGramLM, build
from jaxlm.models.recurrent import RecurrentLM
from jaxlm.models.transformer import Transformer
from jaxlm.precision import Policy
from tests.helpers import ROOT

CELLS = ["rnn", "lstm", "gru"]
NOT_CONFIG = {"vocab_size", "dtype", "param_dtype", "output_dtype", "parent", "name", "cell"}


def test_registry_names_and_errors():
    cfg = base_config().model
    cfg.update(weight_drop=0.25, ar=2.0, tar=1.0, input_dropout=0.4, hidden_dropout=0.3)
    for name in CELLS:
        cfg.name = name
        model = get_model(cfg, 11)
        assert (model.cell, model.weight_drop, model.ar, model.tar) == (name, 0.25, 2.0, 1.0)
        assert (model.input_dropout, model.hidden_dropout) == (0.4, 0.3)
    cfg.name = "nope"
    with pytest.raises(ValueError, match="config.model.name"):
        get_model(cfg, 11)
    with pytest.raises(ValueError, match="cell"):
        RecurrentLM(vocab_size=3, cell="nope").initial_carry(1)


def test_every_model_is_registered():
    from jaxlm.models import RECURRENT
    from jaxlm.models.recurrent import CELLS

    assert MODELS == ("gru", "lstm", "ngram", "rnn", "transformer")
    assert RECURRENT == tuple(sorted(CELLS))  # written out so the registry imports no cell
    with pytest.raises(ValueError, match=r"^config.model.name: unknown model 'nope'; .*'ngram'"):
        get_model({"name": "nope"}, 11)
    with pytest.raises(ValueError, match="^config.model.name: missing"):
        get_model({"embed_dim": 8}, 11)
    with pytest.raises(ValueError, match="^config.model.name: unknown model"):
        model_defaults("nope")


@pytest.mark.parametrize("name", MODELS)
def test_defaults_are_the_model_classes_own(name):
    cls = {"ngram": NGramLM, "transformer": Transformer}.get(name, RecurrentLM)
    want = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in NOT_CONFIG}
    assert model_defaults(name) == want
    # A config with only the name builds the class at exactly those defaults.
    model = get_model({"name": name}, 11)
    assert type(model) is cls and model.vocab_size == 11
    assert {k: getattr(model, k) for k in want} == want


def test_defaults_by_name():
    lstm = model_defaults("lstm")
    assert (lstm["embed_dim"], lstm["hidden_sizes"], lstm["dropout"]) == (256, (512, 512), 0.0)
    assert (lstm["weight_drop"], lstm["tie_embeddings"], lstm["init_scale"]) == (0.0, False, 0.1)
    assert model_defaults("gru") == lstm == model_defaults("rnn")
    assert "cell" not in lstm and "vocab_size" not in lstm and "dtype" not in lstm
    transformer = model_defaults("transformer")
    assert (transformer["tie_embeddings"], transformer["dropout"]) == (True, 0.0)
    assert (transformer["num_layers"], transformer["num_heads"], transformer["max_len"]) == (
        4,
        4,
        512,
    )
    assert model_defaults("ngram") == {
        "order": 5,
        "method": "modified_kneser_ney",
        "discount": (),
        "discount_fallback": (0.5, 1.0, 1.5),
        "k": 1.0,
        "cutoffs": (),
        "add_bos": True,
        "write_arpa": True,
        "arpa_precision": "float32",
        "memory_limit": None,
        "tmp_dir": "",
    }


def test_partial_configs_take_the_defaults():
    model = get_model(ml_collections.ConfigDict({"name": "lstm"}), 10)
    assert (model.cell, model.embed_dim, model.hidden_sizes) == ("lstm", 256, (512, 512))
    small = get_model({"name": "gru", "embed_dim": 4, "hidden_sizes": (6,)}, 10)
    tokens = jnp.zeros((2, 3), jnp.int32)
    params = jax.eval_shape(small.init, jax.random.key(0), tokens, small.initial_carry(2))
    assert params["params"]["layers_0"]["hh"]["kernel"].shape == (6, 18)
    policy = Policy.from_string("params=float32,compute=bfloat16")
    transformer = get_model({"name": "transformer", "num_layers": 1}, 10, policy)
    assert (transformer.num_layers, transformer.embed_dim) == (1, 256)
    assert transformer.dtype == jnp.bfloat16 and transformer.param_dtype == jnp.float32


def test_lists_from_json_become_tuples():
    saved = json.loads(
        json.dumps({"name": "lstm", "hidden_sizes": [8, 4], "weight_drop": [0.1, 0]})
    )
    model = get_model(saved, 10)
    assert model.hidden_sizes == (8, 4) and model.weight_drop == (0.1, 0)
    hash(model)  # static under jit: every attribute is hashable
    lm = get_model(ml_collections.ConfigDict({"name": "ngram", "cutoffs": [0, 1]}), 10)
    assert lm.cutoffs == (0, 1)
    hash(lm)


def test_a_field_of_no_model_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^config.model.hiden_sizes: .*\['ar', 'dropout', "):
        get_model({"name": "lstm", "hiden_sizes": (8,)}, 10)
    with pytest.raises(ValueError, match=r"^config.model.vocab_size: .*'tie_embeddings'"):
        get_model({"name": "transformer", "vocab_size": 10}, 10)
    with pytest.raises(ValueError, match=r"^config.model.cell: "):
        get_model({"name": "lstm", "cell": "gru"}, 10)


def test_a_field_of_another_model_is_refused_by_name():
    # Each model's section holds its own fields: base_config(name).model builds as it is...
    for name in ("lstm", "transformer", "ngram"):
        get_model(base_config(name).model, 10)
    # ...and a field of another model is an error, not silently ignored.
    cfg = base_config("lstm").model.to_dict()
    with pytest.raises(ValueError, match=r"config.model.num_heads: lstm has no such field"):
        get_model({**cfg, "num_heads": 4}, 10)
    with pytest.raises(ValueError, match=r"config.model.\w+: ngram has no such field"):
        get_model({**cfg, "name": "ngram"}, 10)


def test_ngram_is_registered_and_fit_builds_the_configured_model():
    lm = get_model({"name": "ngram", "order": 3, "method": "kneser_ney", "discount": [0.75]}, 5)
    assert isinstance(lm, NGramLM) and lm.discount == (0.75,)
    tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0, 1, 2, 0])
    model = lm.fit(tokens, eos_id=0, vocab=["<eos>", "a", "b", "c", "d"])
    want = build(tokens, 5, 3, method="kneser_ney", discount=0.75, eos_id=0)
    np.testing.assert_array_equal(model.score(tokens)[0], want.score(tokens)[0])
    assert model.info["discounts"] == [[0.75] * 3] * 3 and model.vocab[1] == "a"
    # Modified KN: one triple for every order, or one per order; cut-offs; no fallback.
    per_order = (0.4, 0.9, 1.3, 0.5, 1.0, 1.5, 0.6, 1.1, 1.7)
    model = NGramLM(5, order=3, discount=per_order, cutoffs=(0, 1)).fit(tokens, eos_id=0)
    assert model.info["discounts"] == [list(per_order[i : i + 3]) for i in (0, 3, 6)]
    assert model.info["cutoffs"] == [0, 1, 1]
    with pytest.raises(ValueError, match="order 1"):
        NGramLM(5, order=3, discount_fallback=()).fit(tokens, eos_id=0)
    add_k = NGramLM(5, order=2, method="add_k", k=0.5).fit(tokens)
    assert add_k.info["k"] == 0.5 and add_k.eos_id is None and add_k.add_bos


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"method": "witten_bell"}, "^config.model.method: unknown 'witten_bell'"),
        ({"order": 0}, "^config.model.order: must be >= 1"),
        ({"discount": (0.5, 0.7)}, r"^config.model.discount: .* 3 x order = 15, got 2"),
        ({"method": "kneser_ney", "discount": (0.5, 0.7)}, "^config.model.discount: kneser_ney"),
        ({"method": "add_k", "discount": (0.5,)}, "^config.model.discount: add_k takes"),
    ],
)
def test_ngram_config_errors_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        get_model({"name": "ngram", **fields}, 5)


def test_the_registry_sits_below_config_train_and_checkpoints():
    code = (
        "import sys, jaxlm.models; "
        "print([m for m in sys.modules if m.startswith(('jaxlm.config', 'jaxlm.train', "
        "'jaxlm.checkpoint', 'jaxlm.models.ngram.run'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
