"""jaxlm.train.ngram: the n-gram run through the same run folder, evaluated like any run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxlm.config import load_config
from jaxlm.models import ngram
from jaxlm.models.ngram import arpa
from jaxlm.train.evaluate import evaluate_run
from jaxlm.train.loop import train_and_evaluate


def ngram_config(arg: str | None = None):
    return load_config("ngram" + (f":{arg}" if arg else ""))


def test_config_variants():
    assert ngram_config().model.order == 6 and ngram_config().data.corpus == "builtin"
    ptb = ngram_config("ptb")
    assert (ptb.model.order, ptb.data.tokenizer, ptb.model.cutoffs) == (5, "word", ())
    assert ngram_config("smoke").model.name == "ngram"
    with pytest.raises(ValueError, match="unknown variant"):
        ngram_config("large")


def test_train_and_evaluate_saves_a_model_that_scores_the_reported_numbers(tmp_path):
    from jaxlm.data import load_corpus

    words = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "tiny.train.txt").write_text(words * 30)
    (folder / "tiny.valid.txt").write_text("the cat sat on the log\na dog\n")
    (folder / "tiny.test.txt").write_text("the dog sat on the mat\na cat sat\n")
    config = ngram_config("smoke")
    config.data.corpus, config.data.path, config.data.tokenizer = "text_files", str(folder), "word"
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.method, config.model.discount = "kneser_ney", (0.75,)
    out = train_and_evaluate(config, tmp_path / "run")

    run = tmp_path / "run"
    assert {"model.npz", "model.arpa", "config.json", "tokenizer.json", "status.json"} <= {
        p.name for p in run.iterdir()
    }
    corpus = load_corpus(config.data)
    model = ngram.NGramModel.load(run / "model.npz")
    for split, tokens in (("validation", corpus.validation), ("test", corpus.test)):
        total, count = model.nll(tokens)
        assert out[f"{split}_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-12)
        assert out[f"{split}_bits"] == pytest.approx(total / count / math.log(2), rel=1e-12)
    from_arpa = arpa.read_arpa(run / "model.arpa", vocab=corpus.tokenizer.vocab, eos_id=0)
    np.testing.assert_allclose(from_arpa.score(corpus.test)[0], model.score(corpus.test)[0])
    assert out["discounts"][1] == [0.75] * 3
    # Re-running the finished run returns its numbers without rebuilding.
    mtime = (run / "model.npz").stat().st_mtime_ns
    assert train_and_evaluate(config, run) == out
    assert (run / "model.npz").stat().st_mtime_ns == mtime
    # Evaluated like any run (python -m jaxlm.evaluate --workdir=<the n-gram run>).
    for split in ("validation", "test"):
        r = evaluate_run(run, split=split)
        assert r["perplexity"] == pytest.approx(out[f"{split}_perplexity"], rel=1e-12)
        assert r["unit"] == "word" and r["step"] is None
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["final"]["test_loss"] == out["test_loss"]
    config.model.discount = (0.5, 0.7)
    with pytest.raises(ValueError, match="config.model.discount"):
        train_and_evaluate(config, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()  # refused before any work
