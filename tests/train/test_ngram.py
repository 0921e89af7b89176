"""jaxlm.train.ngram: the n-gram run through the same run folder, evaluated like any run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlm import monitor
from jaxlm.checkpoints import checksums
from jaxlm.config import load_config
from jaxlm.data import builders, corpus_splits
from jaxlm.errors import CheckpointError
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


def tiny_config(tmp_path: Path):
    """A word-level Kneser-Ney 3-gram config on a few lines of text written into ``tmp_path``."""
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
    return config


def test_train_and_evaluate_saves_a_model_that_scores_the_reported_numbers(tmp_path):
    from jaxlm.data import load_corpus

    config = tiny_config(tmp_path)
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
    # The end-of-run sample, as the neural runs give it: the model's, seeded by the run's seed.
    from jaxlm.sampling import sample_text

    t = config.train
    assert out["sample"].startswith(t.sample_prompt) and len(out["sample"].split()) > 10
    assert out["sample"] == sample_text(
        model, None, corpus.tokenizer, t.sample_prompt, t.sample_tokens, config.seed,
        temperature=t.sample_temperature,
    )  # fmt: skip
    # Re-running the finished run returns its numbers without rebuilding.
    mtime = (run / "model.npz").stat().st_mtime_ns
    assert train_and_evaluate(config, run) == out
    assert (run / "model.npz").stat().st_mtime_ns == mtime
    # Evaluated like any run (python -m jaxlm.evaluate --workdir=<the n-gram run>), from the
    # memory-mapped model.
    from jaxlm.checkpoints import load_run

    assert isinstance(load_run(run).model.keys[2], np.memmap)
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


def test_the_command_line_counts_an_ngram_model_without_jax(tmp_path):
    """``python -m jaxlm.train`` runs an n-gram config with numpy alone: ``-X importtime`` lists
    every module the process imported, and JAX, flax, orbax and matplotlib are not among them
    (at temperature 1 the sample is drawn exactly, with numpy), nor TFDS once the corpus is
    prepared."""
    run = tmp_path / "run"
    config = load_config("ngram:smoke")
    builders.ensure_prepared(*corpus_splits(config.data), str(tmp_path / "tfds"))
    cmd = [sys.executable, "-X", "importtime", "-m", "jaxlm.train", "--config=ngram:smoke",
           f"--workdir={run}", f"--config.data.data_dir={tmp_path / 'tfds'}",
           "--config.train.sample_temperature=1.0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"jaxlm.train.ngram", "jaxlm.models.ngram.smoothing"} <= imported
    unwanted = {"jax", "flax", "orbax.checkpoint", "matplotlib", "tensorboardX"}
    assert not imported & (unwanted | {"tensorflow_datasets"})
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["final"]["sample"]
    assert "Sample:" in proc.stdout and checksums.model_files_status(run) == {
        "model.npz": None,
        "model.arpa": None,
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``(config, run folder, final metrics)`` of a finished tiny n-gram run; copy it to damage
    it."""
    base = tmp_path_factory.mktemp("ngram")
    config = tiny_config(base)
    return config, base / "run", train_and_evaluate(config, base / "run")


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _scores(final: dict) -> dict:
    return {k: v for k, v in final.items() if k.endswith(("_loss", "_perplexity"))}


def test_the_model_files_digests_are_written_before_the_run_is_finished(tmp_path, monkeypatch):
    seen = []
    status = monitor.Monitor.status

    def record(self, state, *args, **kwargs):
        if state == "finished":  # what a reader of a finished run would find
            saved = json.loads((tmp_path / "run/model.checksums.json").read_text())["files"]
            seen.append({name: saved[name]["sha256"] for name in saved})
            seen.append({name: checksums.file_digest(tmp_path / "run" / name) for name in saved})
        return status(self, state, *args, **kwargs)

    monkeypatch.setattr(monitor.Monitor, "status", record)
    train_and_evaluate(tiny_config(tmp_path), tmp_path / "run")
    assert len(seen) == 2 and seen[0] == seen[1]
    assert sorted(seen[0]) == ["model.arpa", "model.npz"]


@pytest.mark.parametrize("damage", ["flip model.npz", "truncate model.arpa", "delete model.arpa"])
def test_a_finished_run_with_a_damaged_model_is_built_again(tiny_run, tmp_path, capsys, damage):
    config, original, out = tiny_run
    run = _copy(original, tmp_path)
    verb, name = damage.split()
    target = run / name
    if verb == "flip":
        _flip_byte(target, target.stat().st_size // 2)
    elif verb == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    else:
        target.unlink()
    capsys.readouterr()
    again = train_and_evaluate(config, run)
    log = capsys.readouterr().out
    assert f"{target}: " in log and "building the model again" in log
    assert "already finished" not in log
    assert _scores(again) == _scores(out)
    checksums.check_model_files(run)  # rebuilt, with fresh digests
    train_and_evaluate(config, run)
    assert "already finished" in capsys.readouterr().out
    # A run saved before jaxlm wrote digests is accepted as it is.
    (run / "model.checksums.json").unlink()
    mtime = (run / "model.npz").stat().st_mtime_ns
    assert _scores(train_and_evaluate(config, run)) == _scores(out)
    assert "already finished" in capsys.readouterr().out
    assert (run / "model.npz").stat().st_mtime_ns == mtime


def test_the_report_of_an_ngram_run_shows_its_model_not_empty_curves(tiny_run):
    from html.parser import HTMLParser

    from jaxlm.runs.read import load_run as read_run
    from jaxlm.runs.report import render

    _, run, out = tiny_run
    text = render(read_run(run))

    sections = []

    class Page(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "section":
                sections.append(dict(attrs)["id"])

    Page().feed(text)
    assert sections == ["model", "events", "final", "sample", "config"]
    model = text[text.index('id="model"') : text.index('id="events"')]
    for n, count in enumerate(out["num_ngrams"], 1):
        assert f'<td class="num">{n}</td><td class="num">{count:,}</td>' in model
    final = text[text.index('id="final"') : text.index('id="sample"')]
    assert "num_ngrams" not in final and "perplexity" in final


def test_evaluate_refuses_a_model_that_is_not_the_one_saved(tiny_run, tmp_path):
    _, original, out = tiny_run
    run = _copy(original, tmp_path)
    # Another valid model in its place (a zip with valid CRCs, other numbers): before the
    # digests, evaluate scored it and reported its numbers as the run's.
    other = ngram.NGramModel.load(run / "model.npz")
    other.log_probs = [lp - 0.1 for lp in other.log_probs]  # every one a tenth of a nat lower
    other.save(run / "model.npz")  # the same layout and size
    with np.load(run / "model.npz") as z:
        arrays = dict(z)
    with pytest.raises(CheckpointError, match=f"{run / 'model.npz'}: .*SHA-256 differs"):
        evaluate_run(run)
    (run / "model.npz").unlink()
    with pytest.raises(CheckpointError, match=f"{run / 'model.npz'}: missing"):
        evaluate_run(run)
    shutil.copy(original / "model.npz", run / "model.npz")
    assert evaluate_run(run)["perplexity"] == pytest.approx(out["validation_perplexity"])
    # A run saved before jaxlm wrote digests (and aligned its arrays) is evaluated as it is.
    np.savez(run / "model.npz", **arrays)
    (run / "model.checksums.json").unlink()
    assert evaluate_run(run)["perplexity"] > out["validation_perplexity"]


def test_verify_checks_the_model_files_of_an_ngram_run(tiny_run, tmp_path, cli, capsys):
    _, original, _ = tiny_run
    run = _copy(original, tmp_path)
    assert cli(["verify", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"{run / 'model.npz'}: ok", f"{run / 'model.arpa'}: ok"]
    _flip_byte(run / "model.arpa", 5)
    assert cli(["verify", str(run)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run / 'model.npz'}: ok"
    assert lines[1].startswith(f"{run / 'model.arpa'}: damaged: not the file that was saved")
    (run / "model.checksums.json").write_text("{")
    assert cli(["verify", str(run)]) == 1
    assert f"{run / 'model.checksums.json'}: damaged: unreadable" in capsys.readouterr().out
    (run / "model.checksums.json").unlink()  # saved before jaxlm wrote them: accepted
    assert cli(["verify", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run / 'model.npz'}: no checksums (saved before jaxlm wrote them)"
    assert cli(["verify", str(run), "--step", "3"]) == 2
    assert "n-gram run" in capsys.readouterr().err
