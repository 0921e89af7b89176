"""``jaxlm.evaluate``: a checkpoint's loss over a whole split equals the trainer's final one."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import pytest

from jaxlm import checkpoint_tools as ct
from jaxlm import data, sharding, trainer
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.evaluate import evaluate_checkpoint
from jaxlm.models import get_model
from jaxlm.precision import Policy
from tests.helpers import ROOT, smoke


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step smoke run with checkpoints at steps 1 and 2, and its final metrics."""
    config = smoke(
        **{
            "train.num_steps": 2,
            "train.checkpoint_every": 1,
            "train.log_every": 1,
            "train.eval_every": 100,
            "train.sample_tokens": 0,
            "data.eval_batch_size": 64,
        }
    )
    workdir = tmp_path_factory.mktemp("evaluate") / "run"
    final = trainer.train_and_evaluate(config, workdir)
    return workdir, final


def test_matches_the_trainers_final_evaluation(run):
    workdir, final = run
    for split in ("validation", "test"):
        r = evaluate_checkpoint(workdir, split=split)
        assert r["step"] == 2 and r["unit"] == "char" and r["split"] == split
        assert r["loss"] == pytest.approx(final[f"{split}_loss"], rel=1e-6)
        assert r["bits"] == pytest.approx(r["loss"] / math.log(2), rel=1e-12)
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-12)
    earlier = evaluate_checkpoint(workdir / "checkpoints/1")
    assert earlier["step"] == 1 and earlier["loss"] != pytest.approx(final["validation_loss"])
    assert evaluate_checkpoint(workdir, step=1)["loss"] == earlier["loss"]


def test_averaged_checkpoint_evaluates(run, tmp_path):
    workdir, _ = run
    out = ct.average(ct.last_checkpoints(workdir, 2), tmp_path / "avg")
    r = evaluate_checkpoint(out, split="test")
    assert math.isfinite(r["loss"]) and r["tokens"] > 1000


def test_errors_name_the_folder(run, tmp_path):
    with pytest.raises(ct.CheckpointError, match=str(tmp_path)):
        evaluate_checkpoint(tmp_path)
    with pytest.raises(ct.CheckpointError, match="no checkpoint of step 7"):
        evaluate_checkpoint(run[0], step=7)
    with pytest.raises(ValueError, match="split"):
        evaluate_checkpoint(tmp_path, split="train")


def test_command_line(run):
    workdir, final = run
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxlm.evaluate",
            f"--workdir={workdir}",
            "--checkpoint=2",
            "--split=test",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert "test split" in line and f"loss {final['test_loss']:.4f} nats/char" in line
    assert f"perplexity {final['test_perplexity']:.2f}" in line


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
    final = trainer.train_and_evaluate(config, tmp_path / "run")
    monkeypatch.setattr(transforms, "report_validation_loss", real)

    state, _ = ct.load_state(tmp_path / "run")
    counts = [v for k, v in ct.flatten(state["opt_state"]).items() if k.endswith("num_averaged")]
    assert [int(c) for c in counts] == [3]
    for split in ("validation", "test"):
        r = evaluate_checkpoint(tmp_path / "run", split=split)
        assert r["loss"] == pytest.approx(final[f"{split}_loss"], rel=1e-6)
    # The last iterate alone gives another loss: the average is what was evaluated.
    mesh = sharding.make_mesh(1, 1)
    model = get_model(config.model, 104, Policy.from_string(config.precision))
    corpus = data.load_corpus(
        config.data, tokenizer_from_json(ct.read_meta(tmp_path / "run")["tokenizer"])
    )
    with jax.set_mesh(mesh):
        last = trainer.evaluate(
            model,
            state["params"],
            corpus.split("validation"),
            mesh,
            batch_size=config.data.eval_batch_size,
            seq_len=config.data.seq_len,
        )
    assert last["loss"] != pytest.approx(final["validation_loss"], rel=1e-4)
