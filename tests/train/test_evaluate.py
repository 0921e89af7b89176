"""jaxlm.train.evaluate: a saved run's loss over a whole split equals the trainer's final one."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import data, sharding, state
from jaxlm.checkpoints import tools as ck_tools
from jaxlm.config import load_config
from jaxlm.models import get_model
from jaxlm.train.evaluate import Evaluator, evaluate, evaluate_run, summarize
from jaxlm.train.loop import train_and_evaluate
from jaxlm.tree import flatten
from tests.helpers import count_compiles, smoke


def final_of(workdir):
    return json.loads((workdir / "status.json").read_text())["final"]


def test_matches_the_trainers_final_evaluation(run):
    final = final_of(run)
    for split in ("validation", "test"):
        r = evaluate_run(run, split=split)
        assert r["step"] == 3 and r["unit"] == "char" and r["split"] == split
        assert r["loss"] == pytest.approx(final[f"{split}_loss"], rel=1e-6)
        assert r["bits"] == pytest.approx(r["loss"] / math.log(2), rel=1e-12)
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-12)
        # Per word and per byte: the same nats over the text's words and bytes, as the
        # trainer's final report has them.
        corpus = data.load_corpus(load_config("lstm:smoke").data)
        counts = corpus.counts[split]
        assert (r["words"], r["bytes"]) == (counts["words"], counts["bytes"])
        assert r["bytes"] == len(data.corpus_splits(load_config("lstm:smoke").data)[0][split])
        total = r["loss"] * r["tokens"]
        assert r["loss_per_word"] == pytest.approx(total / r["words"], rel=1e-12)
        assert r["bits_per_byte"] == pytest.approx(total / r["bytes"] / math.log(2), rel=1e-12)
        assert r["perplexity_per_word"] == pytest.approx(math.exp(total / r["words"]))
        for key in ("loss_per_word", "bits_per_byte", "perplexity_per_word"):
            assert r[key] == pytest.approx(final[f"{split}_{key}"], rel=1e-6), key
        # A character model: about 5 characters a word, 1 byte a character (nearly all ASCII).
        assert 4 < r["loss_per_word"] / r["loss"] < 8 and 0.9 < r["tokens"] / r["bytes"] <= 1
    earlier = evaluate_run(run / "checkpoints/1")
    assert earlier["step"] == 1 and earlier["loss"] != pytest.approx(final["validation_loss"])
    assert evaluate_run(run, step=1)["loss"] == earlier["loss"]


def test_averaged_checkpoint_evaluates(run, tmp_path):
    out = ck_tools.average(ck.last_checkpoints(run, 2), tmp_path / "avg")
    r = evaluate_run(out, split="test")
    assert math.isfinite(r["loss"]) and r["tokens"] > 1000


def test_errors_name_the_folder(run, tmp_path):
    with pytest.raises(ck.CheckpointError, match=str(tmp_path)):
        evaluate_run(tmp_path)
    with pytest.raises(ck.CheckpointError, match="no checkpoint of step 7"):
        evaluate_run(run, step=7)
    with pytest.raises(ValueError, match="split"):
        evaluate_run(tmp_path, split="train")


def test_nt_asgd_run_is_evaluated_with_the_averaged_params(tmp_path, monkeypatch):
    from jaxlm import transforms

    config = smoke(
        **{
            "train.num_steps": 6,
            "train.checkpoint_every": 6,
            "train.log_every": 6,
            "train.eval_every": 1,
            "train.eval_steps": 2,
            "train.sample_tokens": 0,
            "optimizer.nt_asgd_nonmono": 1,
        }
    )
    # Report the negated validation loss: it "rises" at every check, so averaging starts at the
    # third check (step 3) and steps 4-6 are averaged.
    real = transforms.report_validation_loss
    monkeypatch.setattr(transforms, "report_validation_loss", lambda s, loss: real(s, -loss))
    final = train_and_evaluate(config, tmp_path / "run")
    monkeypatch.setattr(transforms, "report_validation_loss", real)

    saved, _ = ck.load_state(tmp_path / "run")
    counts = [v for k, v in flatten(saved["opt_state"]).items() if k.endswith("num_averaged")]
    assert [int(c) for c in counts] == [3]
    for split in ("validation", "test"):
        r = evaluate_run(tmp_path / "run", split=split)
        assert r["loss"] == pytest.approx(final[f"{split}_loss"], rel=1e-6)
    # The last iterate alone gives another loss: the average is what was evaluated.
    mesh = sharding.make_mesh(1, 1)
    model = get_model(config.model, 104)
    run = ck.load_run(tmp_path / "run")
    corpus = data.load_corpus(config.data, run.tokenizer)
    with jax.set_mesh(mesh):
        last = evaluate(
            model,
            saved["params"],
            corpus.split("validation"),
            mesh,
            batch_size=config.data.eval_batch_size,
            seq_len=config.data.seq_len,
        )
    assert last["loss"] != pytest.approx(final["validation_loss"], rel=1e-4)


def test_evaluating_no_tokens_is_an_error():
    config = smoke()
    setup = state.build(config, 10)
    params = jax.jit(setup.init)().params
    mesh = sharding.make_mesh(1, 1)
    tokens = np.arange(40, dtype=np.int32) % 10
    ok = evaluate(setup.model, params, tokens, mesh, batch_size=2, seq_len=4)
    assert ok["tokens"] > 0 and math.isfinite(ok["loss"])
    with pytest.raises(ValueError, match="evaluated no tokens"):
        evaluate(setup.model, params, tokens, mesh, batch_size=2, seq_len=4, max_windows=-1)
    # The window step and the initial carry are compiled once per (model, batch, mesh).
    with count_compiles() as compiles:
        again = evaluate(setup.model, params, tokens, mesh, batch_size=2, seq_len=4)
    assert compiles() == 0 and again == ok


def test_summarize_reduces_sums_and_counts():
    r = summarize(3 * math.log(8.0), 3)
    assert r == pytest.approx(
        {"loss": math.log(8.0), "bits": 3.0, "perplexity": 8.0, "tokens": 3.0}
    )
    with pytest.raises(ValueError, match="evaluated no tokens"):
        summarize(0.0, 0)
    # 3 tokens over 2 words and 6 bytes: 8 per token is 8 ** 1.5 per word, 2 ** 1.5 per byte.
    r = summarize(3 * math.log(8.0), 3, words=2, bytes=6)
    assert r["perplexity_per_word"] == pytest.approx(8.0**1.5)
    assert r["bits_per_byte"] == pytest.approx(1.5) and r["perplexity_per_byte"] == pytest.approx(
        2**1.5
    )
    assert (r["words"], r["bytes"], r["loss"]) == (2.0, 6.0, pytest.approx(math.log(8.0)))


def test_per_word_and_byte_figures_come_only_from_a_whole_split():
    config = smoke()
    setup = state.build(config, 10)
    params = jax.jit(setup.init)().params
    tokens = np.arange(40, dtype=np.int32) % 10
    counts = {"words": 8, "bytes": 40}
    evaluator = Evaluator(setup.model, sharding.make_mesh(1, 1), batch_size=2, seq_len=4)
    whole = evaluator(params, tokens, counts=counts)
    assert whole["loss_per_byte"] == pytest.approx(whole["loss"] * 39 / 40, rel=1e-6)
    part = evaluator(params, tokens, max_windows=2, counts=counts)
    assert part["tokens"] < 39 and "loss_per_byte" not in part and "words" not in part


def test_an_evaluator_gives_the_same_loss_on_one_and_four_devices():
    config = load_config("transformer:smoke")
    setup = state.build(config, 20)
    params = jax.jit(setup.init)().params
    tokens = np.random.default_rng(0).integers(0, 20, 700)
    results = []
    for data_size in (1, 4):
        mesh = sharding.make_mesh(data_size, 1)
        with jax.set_mesh(mesh):
            results.append(Evaluator(setup.model, mesh, batch_size=8, seq_len=16)(params, tokens))
    assert results[0]["tokens"] == results[1]["tokens"] == 699
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
