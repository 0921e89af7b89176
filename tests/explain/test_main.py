"""python -m jaxlm.explain: the terminal, JSON and the page from saved runs (an LSTM, a
Transformer and an n-gram run, written here without training), and one-line errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxlm import checkpoints as ck
from jaxlm.checkpoints.checksums import write_model_checksums
from jaxlm.checkpoints.layout import CONFIG_FILE, NGRAM_MODEL, TOKENIZER_FILE
from jaxlm.config import base_config
from jaxlm.data.tokenizers import CharTokenizer, save_tokenizer
from jaxlm.explain.__main__ import main
from jaxlm.explain.render import html_data
from jaxlm.models import get_model
from jaxlm.models.ngram import NGramLM
from jaxlm.state import TrainState

CORPUS = "the cat sat on the mat. the dog sat on the log.\n" * 4
TEXT = "the cat sat"


def _neural_run(workdir, name: str, **fields):
    tok = CharTokenizer.train(CORPUS)
    c = base_config(name)
    c.model.update(fields)
    c.data.seq_len = 16
    model = get_model(c.model, tok.vocab_size)
    init = jax.jit(model.init)
    params = init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), model.initial_carry(1))
    params = params["params"]
    state = TrainState(
        step=jnp.asarray(1, jnp.int32),
        params=params,
        opt_state=optax.adam(1e-3).init(params),
        rng=jax.random.PRNGKey(0),
        carry=None,
    )
    ck.write_checkpoint(workdir, 1, state, ck.make_meta(c, tok))
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_runs")
    lstm = _neural_run(root / "lstm", "lstm", embed_dim=8, hidden_sizes=(16,))
    tf = _neural_run(
        root / "tf", "transformer", embed_dim=16, num_layers=1, num_heads=2, max_len=16
    )
    tok = CharTokenizer.train(CORPUS)
    ngram = root / "ngram"
    ngram.mkdir()
    c = base_config("ngram")
    c.model.order = 3
    model = NGramLM(vocab_size=tok.vocab_size, order=3).fit(tok.encode(CORPUS), vocab=tok.vocab)
    model.save(ngram / NGRAM_MODEL)
    save_tokenizer(tok, ngram / TOKENIZER_FILE)
    (ngram / CONFIG_FILE).write_text(c.to_json())
    write_model_checksums(ngram, [NGRAM_MODEL])
    return {"lstm": lstm, "tf": tf, "ngram": ngram}


def test_the_terminal_shows_diagnostics_and_the_attribution_of_the_next_token(runs, capsys):
    assert main([f"--workdir={runs['lstm']}", f"--text={TEXT}", "--plain", "--words"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # plain: no colours
    lines = out.splitlines()
    assert lines[0] == "lstm: 11 tokens"
    assert any(line.startswith("why ") and "after the text" in line for line in lines)
    assert "  ig:  (sum " in out and "per word: 'the'" in out
    assert len([ln for ln in lines if ln.startswith("   ") and ln.split()[0].isdigit()]) == 10


def test_json_and_page_hold_every_position_and_method(runs, tmp_path, capsys):
    page, data_file = tmp_path / "why.html", tmp_path / "why.json"
    long = "the cat sat on the mat"  # 22 characters; the Transformer's context is 16
    argv = [f"--workdir={runs['tf']}", f"--text={long}", f"--html={page}", f"--json={data_file}"]
    assert main([*argv, f"--ngram={runs['ngram']}"]) == 0
    captured = capsys.readouterr()
    warning = (
        "the text's 22 tokens exceed the Transformer's context of 16: the first 6 were "
        "cropped, the last 16 explained"
    )
    assert captured.err.strip() == f"warning: {warning}"
    assert "16 tokens (the first 6 before the window)" in captured.out
    assert "wrote the page to" in captured.out
    data = json.loads(data_file.read_text())
    assert data["schema"] == "jaxlm.explain/1" and data["warnings"] == [warning]
    assert data["model"] == {"kind": "transformer", "name": "transformer"}
    assert data["methods"] == ["ig", "gxi", "saliency", "occlusion"]
    assert data["start"] == 6 and [t["text"] for t in data["tokens"]] == list(long[6:])
    assert [t["predicts_index"] for t in data["targets"]] == list(range(1, 17))
    for t in data["targets"]:
        assert {len(v) for v in t["attributions"].values()} == {t["position"] + 1}
        assert abs(t["completeness_gap"]) < 0.01
    assert len(data["attention"]["maps"]) == 1 and len(data["attention"]["rollout"]) == 16
    assert data["tokens"][1]["ngram"]["summary"].startswith("3-gram ")
    html = page.read_text()
    assert html_data(html) == data  # the page draws the same data
    assert "<script src" not in html and "<link" not in html and "http" not in html
    assert 'id="method"' in html and 'name="view"' in html


def test_an_ngram_run_explains_with_its_back_off_paths(runs, capsys):
    assert main([f"--workdir={runs['ngram']}", "--text=the dog", "--json=-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["kind"] == "ngram" and data["methods"] == ["occlusion"]
    assert all(t["ngram"]["path"][-1]["found"] for t in data["tokens"])


@pytest.mark.parametrize(
    "which, args, message",
    [
        ("lstm", ["--text="], "error: --text: the text is empty; give the text to explain"),
        (
            "lstm",
            [f"--text={TEXT}", "--target=at"],
            "error: --target: 'at' is 2 tokens of the run's char tokenizer (['a', 't']); "
            "give exactly one token",
        ),
        (
            "lstm",
            [f"--text={TEXT}", "--target=Z"],
            "error: --target: 'Z' is not in the run's char vocabulary (it reads as '<unk>')",
        ),
        ("lstm", [f"--text={TEXT}", "--contrast=a"], "error: --contrast: needs --target"),
        ("lstm", [f"--text={TEXT}", "--method=lime"], "error: --method: unknown 'lime'"),
        (
            "ngram",
            [f"--text={TEXT}", "--method=ig"],
            "error: --method: ig needs gradients; an n-gram model has none",
        ),
    ],
)
def test_bad_input_is_one_line(runs, capsys, which, args, message):
    assert main([f"--workdir={runs[which]}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_a_workdir_without_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([f"--workdir={tmp_path / 'empty'}", f"--text={TEXT}"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("error: ") and str(tmp_path / "empty") in err
