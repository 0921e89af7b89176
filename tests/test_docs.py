"""The Python snippets of the README (both), docs/finetuning.md, docs/jobs.md and docs/data.md
run as written, from a fresh folder."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


def test_the_readme_snippet_trains_and_loads_a_run(tmp_path, monkeypatch):
    snippet, _ = python_blocks("README.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["final"]["step"] == 60 and (tmp_path / "runs/smoke/status.json").is_file()
    assert namespace["config"].name == "lstm_smoke" and namespace["tokenizer"].kind == "char"
    assert set(namespace["params"]) == {"embed", "head", "layers_0", "layers_1"}


def test_the_readme_ngram_snippet_samples_from_a_saved_run(tmp_path, monkeypatch, capsys):
    from jaxlm import load_config, train_and_evaluate

    _, snippet = python_blocks("README.md")
    monkeypatch.chdir(tmp_path)
    train_and_evaluate(load_config("ngram:smoke"), tmp_path / "runs/ngram_smoke")  # its comment
    capsys.readouterr()
    exec(snippet, {})
    text = capsys.readouterr().out
    assert len(text.strip()) > 20  # the 40 tokens that continue "The "


def test_the_fine_tuning_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = python_blocks("docs/finetuning.md")
    assert len(blocks) == 2
    for block in blocks:
        exec(block, namespace)
    groups = namespace["groups"]
    assert groups[1:3] == [["blocks_1"], ["blocks_0"]]  # the groups match the Transformer's tree
    assert "^embed/embedding$" in groups[0] and groups[-1] == ["^pos_embed$"]
    assert len(namespace["opt_state"].inner_state) == 2  # clip and adamw, initialised
    import jax

    same = jax.tree.map(lambda a, b: (a == b).all(), namespace["by_mask"], namespace["by_patterns"])
    assert all(jax.tree.leaves(same))


def test_the_job_queue_snippet_runs(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks("docs/jobs.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block, namespace)
    assert {r.state for r in namespace["done"].values()} == {"finished"}
    assert "'1': ('finished', '0'), '2': ('finished', '1'), '3': ('finished', '4')" in (
        capsys.readouterr().out
    )


def test_the_data_page_snippet_maps_token_losses_to_words(tmp_path, monkeypatch):
    (block,) = python_blocks("docs/data.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block, namespace)
    words, losses = namespace["words"], namespace["losses"]
    assert words.words == ("the", "cats", "sat", "<eos>")
    sums = namespace["aggregate"](losses, words, "sum")
    assert sums.sum() == pytest.approx(losses.sum()) and len(sums) == 4


def test_the_search_snippet_prunes_a_run(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks("docs/search.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block, namespace)
    hook, study = namespace["hook"], namespace["study"]
    assert hook.pruned  # the smoke run's first validation loss is above 2.0
    assert study.trials[0].state.name == "PRUNED"
    assert list(study.trials[0].intermediate_values) == [30]  # smoke: evaluated every 30 steps
    assert (tmp_path / "runs/trial0/checkpoints/30").is_dir()
