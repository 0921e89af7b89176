"""jaxlm.checkpoints.run: a trained run read back in one call; pretrained parameters mapped
onto another vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import checkpoints as ck
from jaxlm.config import base_config
from jaxlm.data.tokenizers import ByteTokenizer, CharTokenizer
from jaxlm.state import TrainState
from tests.optim.test_presets import D, lm_tree


def save_run(workdir, params, tokenizer, model=None):
    c = base_config()
    if model:
        c.model.update(model)
    state = TrainState(
        step=jnp.asarray(5, jnp.int32),
        params=params,
        opt_state=optax.adam(1e-3).init(params),
        rng=jax.random.PRNGKey(0),
        carry=None,
    )
    ck.write_checkpoint(workdir, 5, state, ck.make_meta(c, tokenizer))


def test_load_pretrained_maps_vocabularies(tmp_path):
    old_tok = CharTokenizer(list("abcde"))  # vocab: <unk> a b c d e
    new_tok = CharTokenizer(list("bdefx"))  # vocab: <unk> b d e f x
    old = lm_tree(v=6, seed=1)
    save_run(tmp_path, old, old_tok)
    fresh = lm_tree(v=6, seed=2)
    params, mapping = ck.load_pretrained(str(tmp_path), fresh, new_tok)
    assert mapping.kept == 4 and mapping.new == ("f", "x") and mapping.dropped == ("a", "c")
    assert "4 tokens keep their trained rows" in mapping.summary()
    new_to_old = {0: 0, 1: 2, 2: 4, 3: 5}  # <unk>, b, d, e
    emb, old_emb, fresh_emb = (t["embed"]["embedding"] for t in (params, old, fresh))
    for j in range(6):
        want = old_emb[new_to_old[j]] if j in new_to_old else fresh_emb[j]
        np.testing.assert_array_equal(emb[j], want)
        want = (
            old["head"]["kernel"][:, new_to_old[j]]
            if j in new_to_old
            else fresh["head"]["kernel"][:, j]
        )
        np.testing.assert_array_equal(params["head"]["kernel"][:, j], want)
    np.testing.assert_array_equal(
        params["layers_1"]["hh"]["kernel"], old["layers_1"]["hh"]["kernel"]
    )
    # a checkpoint folder works too, and a bigger vocabulary keeps the shapes of this run
    bigger = CharTokenizer(list("abcdefgh"))  # <unk> a b c d e: ids 0..5 as before; f g h new
    fresh9 = lm_tree(v=9, seed=3)
    fresh9["head"]["bias"] = jnp.arange(1.0, 10.0)  # not zero, unlike the checkpoint's bias
    params, mapping = ck.load_pretrained(str(tmp_path / "checkpoints" / "5"), fresh9, bigger)
    assert params["embed"]["embedding"].shape == (9, D) and mapping.new == ("f", "g", "h")
    np.testing.assert_array_equal(params["head"]["bias"][:6], old["head"]["bias"])
    np.testing.assert_array_equal(params["head"]["bias"][6:], fresh9["head"]["bias"][6:])
    np.testing.assert_array_equal(params["embed"]["embedding"][:6], old["embed"]["embedding"])
    np.testing.assert_array_equal(
        params["embed"]["embedding"][6:], fresh9["embed"]["embedding"][6:]
    )
    np.testing.assert_array_equal(params["head"]["kernel"][:, :6], old["head"]["kernel"])
    np.testing.assert_array_equal(params["head"]["kernel"][:, 6:], fresh9["head"]["kernel"][:, 6:])
    assert not np.array_equal(old["embed"]["embedding"], fresh9["embed"]["embedding"][:6])


def test_load_pretrained_refuses_other_tokenizer_kind_or_shape(tmp_path):
    save_run(
        tmp_path, lm_tree(v=6), CharTokenizer(list("abcde")), model={"hidden_sizes": (4, 4, 4)}
    )
    with pytest.raises(ValueError, match="'char' tokenizer but this run uses 'byte'"):
        ck.load_pretrained(str(tmp_path), lm_tree(v=258), ByteTokenizer())
    other = lm_tree(v=6)
    other["layers_2"]["hh"]["kernel"] = jnp.zeros((4, 8))
    m = base_config().model
    m.hidden_sizes = (4, 4, 2)
    with pytest.raises(
        ValueError, match=r"(?s)layers_2/hh/kernel: checkpoint \(4, 16\).*hidden_sizes"
    ):
        ck.load_pretrained(str(tmp_path), other, CharTokenizer(list("abcde")), model_config=m)
    with pytest.raises(ck.CheckpointError, match="config.init_from: .*nothing does not exist"):
        ck.load_pretrained(str(tmp_path / "nothing"), other, ByteTokenizer())


def test_load_run_gives_model_params_tokenizer_and_config_in_one_call(run):
    model, params, tokenizer, config = ck.load_run(run)
    assert config.model.hidden_sizes == (64, 64) and tokenizer.kind == "char"
    saved, _ = ck.load_state(run, parts=("params",))
    np.testing.assert_array_equal(params["head"]["kernel"], saved["params"]["head"]["kernel"])
    tokens = jnp.asarray(tokenizer.encode("The ")[None])
    logits, _, _ = model.apply({"params": params}, tokens, model.initial_carry(1))
    assert logits.shape == (1, 4, tokenizer.vocab_size)
    assert ck.load_run(run, step=1).params["head"]["kernel"].shape == params["head"]["kernel"].shape


def test_a_bpe_run_saves_its_tokenizer_and_resumes_with_it(tmp_path, capsys):
    """The trained BPE is in every checkpoint's meta as tokenizers' JSON; a resumed run and
    load_run use that one, not a new one trained again."""
    from jaxlm.train.loop import train_and_evaluate
    from tests.helpers import smoke

    overrides = {
        "data.tokenizer": "bpe",
        "data.vocab_size": 300,
        "data.eval_batch_size": 64,
        "train.checkpoint_every": 2,
        "train.eval_every": 100,
        "train.sample_tokens": 4,
    }
    workdir = tmp_path / "run"
    first = train_and_evaluate(smoke(**overrides, **{"train.num_steps": 2}), workdir)
    assert "Trained a bpe tokenizer of 300 tokens" in capsys.readouterr().out
    meta = ck.read_meta(workdir)
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["vocab_size"] == 300
    assert meta["tokenizer"]["tokenizer"]["model"]["type"] == "BPE"
    run = ck.load_run(workdir)
    assert run.tokenizer.to_json() == meta["tokenizer"]
    assert run.tokenizer.decode(run.tokenizer.encode('The "assert"')) == 'The "assert"'
    assert first["validation_bits_per_byte"] > 0 and "test_perplexity_per_word" in first
    resumed = train_and_evaluate(smoke(**overrides, **{"train.num_steps": 3}), workdir)
    out = capsys.readouterr().out
    assert "Resumed from" in out and "Trained a bpe" not in out and resumed["step"] == 3
