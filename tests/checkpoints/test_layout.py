"""jaxlm.checkpoints.layout: finding checkpoints, from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxlm import checkpoints as ck


def test_steps_and_resolve(run):
    assert ck.list_steps(run) == [1, 2, 3]
    assert ck.resolve(run) == run / "checkpoints/3"
    assert ck.resolve(run, 2) == run / "checkpoints/2"
    assert ck.resolve(run / "checkpoints/2") == run / "checkpoints/2"
    with pytest.raises(ck.CheckpointError, match="no checkpoint of step 9"):
        ck.resolve(run, 9)
    with pytest.raises(ck.CheckpointError, match=str(run.parent)):
        ck.resolve(run.parent)


def test_relative_paths_work_from_any_working_directory(run, tmp_path, monkeypatch, cli):
    # orbax takes only absolute paths: every entry point resolves them where they enter.
    monkeypatch.chdir(run.parent)
    rel = Path(run.name)
    assert ck.resolve(rel) == run / "checkpoints/3" and ck.resolve(rel).is_absolute()
    assert ck.read_meta(rel)["tokenizer"]["kind"] == "char"
    state, _ = ck.load_state(rel, parts=("params",))
    assert "head" in state["params"]
    model, params, tokenizer, config = ck.load_run(rel)
    assert config.model.name == "lstm" and tokenizer.kind == "char"
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    rel = Path("..") / run.parent.name / run.name  # and from another folder
    assert cli(["inspect", str(rel)]) == 0
    assert cli(["export", str(rel), "out/p.npz", "--params-only"]) == 0
    assert cli(["diff", str(rel), str(rel)]) == 0
    assert cli(["average", "--last", "2", str(rel), "--out", "out/avg"]) == 0
    assert (out / "p.npz").is_file() and ck.list_steps(out / "avg") == [3]
