"""GPT-2 interop: a tiny random Hugging Face GPT2LMHeadModel (made locally, no download) and our
Transformer give the same logits to 1e-4 in float32, converted in either direction."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is made locally; never reach a hub
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxlm import checkpoints, sharding  # noqa: E402
from jaxlm.checkpoints.tools import write_arrays  # noqa: E402
from jaxlm.config import base_config  # noqa: E402
from jaxlm.errors import JaxlmError  # noqa: E402
from jaxlm.interop import gpt2  # noqa: E402
from jaxlm.tree import flatten  # noqa: E402
from tests.helpers import ROOT, train_state_target  # noqa: E402

VOCAB, POSITIONS, WIDTH, LAYERS, HEADS = 50, 64, 32, 2, 4
TOLERANCE = 1e-4


def _hf_model(tied: bool, seed: int = 0):
    """A tiny GPT-2 with every weight (biases and LayerNorms too) randomised."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        tie_word_embeddings=tied,
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _our_logits(checkpoint: Path, ids: np.ndarray) -> np.ndarray:
    state, meta = checkpoints.load_state(checkpoint, parts=("params",))
    vocab = state["params"]["embed"]["embedding"].shape[0]
    model = gpt2.build_model(meta["config"]["model"], vocab)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, None)[0])
    return np.asarray(apply(state["params"], jnp.asarray(ids)))


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (3, POSITIONS)).astype(np.int64)


@pytest.mark.parametrize("tied", [True, False])
def test_hf_to_jaxlm_same_logits(tmp_path, ids, tied):
    hf = _hf_model(tied)
    hf.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf/model.safetensors").is_file()
    out = gpt2.hf_to_jaxlm(tmp_path / "hf", tmp_path / "run")
    assert out == tmp_path / "run/checkpoints/0"
    diff = np.abs(_our_logits(out, ids) - _hf_logits(hf, ids)).max()
    print(f"\nGPT-2 (tied={tied}) HF -> jaxlm: largest logit difference {diff:.3g}")
    assert diff < TOLERANCE
    # The checkpoint restores as the trainer would resume it (TrainState target, shardings).
    target = train_state_target(tmp_path / "run", sharding.make_mesh())
    mgr = checkpoints.manager(tmp_path / "run", read_only=True)
    try:
        state, _ = checkpoints.restore(mgr, target)
    finally:
        mgr.close()
    np.testing.assert_array_equal(
        state.params["embed"]["embedding"], hf.transformer.wte.weight.detach().numpy()
    )
    report = checkpoints.tools.inspect(out)
    hf_count = sum(p.numel() for p in hf.parameters())
    assert report["totals"]["params"]["count"] == hf_count
    assert report["config"]["model"]["tie_embeddings"] is tied


def _jaxlm_checkpoint(workdir: Path, tied: bool) -> Path:
    """A jaxlm Transformer checkpoint with every parameter randomised."""
    config = base_config("transformer")
    config.name = "tiny_transformer"
    config.data.tokenizer = "byte"
    for key, value in dict(
        name="transformer",
        embed_dim=WIDTH,
        num_layers=LAYERS,
        num_heads=HEADS,
        mlp_dim=0,
        max_len=POSITIONS,
        norm="layernorm",
        positions="learned",
        tie_embeddings=tied,
    ).items():
        config.model[key] = value
    model = gpt2.build_model(config.model, VOCAB)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8), jnp.int32), None)["params"])
    rng = np.random.default_rng(2)
    params = jax.tree.map(
        lambda x: (x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32),
        jax.device_get(init(jax.random.PRNGKey(1))),
    )
    state = {"step": np.int32(7), "params": params, "rng": np.zeros(2, np.uint32)}
    meta = checkpoints.make_meta(config, {"kind": "byte", "note": "kept through the round trip"})
    return checkpoints.write_checkpoint(workdir, 7, state, meta)


@pytest.mark.parametrize("tied", [True, False])
def test_jaxlm_to_hf_same_logits_and_round_trip(tmp_path, ids, tied):
    ckpt = _jaxlm_checkpoint(tmp_path / "run", tied)
    folder = gpt2.jaxlm_to_hf(tmp_path / "run", tmp_path / "hf")
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    hf = hf.eval()
    assert hf.config.tie_word_embeddings is tied
    diff = np.abs(_our_logits(ckpt, ids) - _hf_logits(hf, ids)).max()
    print(f"\nGPT-2 (tied={tied}) jaxlm -> HF: largest logit difference {diff:.3g}")
    assert diff < TOLERANCE

    # And back: the same parameters bit for bit, with the run's config and tokenizer.
    back = gpt2.hf_to_jaxlm(folder, tmp_path / "back", step=7)
    original, meta = checkpoints.load_state(ckpt, parts=("params",))
    again, meta_again = checkpoints.load_state(back, parts=("params",))
    assert flatten(again).keys() == flatten(original).keys()
    for name, value in flatten(original).items():
        assert flatten(again)[name].tobytes() == value.tobytes(), name
    assert meta_again["tokenizer"] == meta["tokenizer"]
    assert meta_again["config"]["name"] == "tiny_transformer"


def test_unsupported_models_are_refused_with_the_reason(tmp_path):
    hf = _hf_model(True)
    hf.config.activation_function = "relu"
    hf.save_pretrained(tmp_path / "relu")
    with pytest.raises(gpt2.ConversionError, match=r"config.json.*activation_function 'relu'"):
        gpt2.hf_to_jaxlm(tmp_path / "relu", tmp_path / "x")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/config.json").write_text(json.dumps(hf.config.to_dict()))
    (tmp_path / "bin/pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="never pickled"):
        gpt2.hf_to_jaxlm(tmp_path / "bin", tmp_path / "x")
    model = dict(
        name="transformer",
        embed_dim=WIDTH,
        num_layers=1,
        num_heads=4,
        norm="rmsnorm",
        positions="rotary",
    )
    with pytest.raises(gpt2.ConversionError, match="rmsnorm.*rotary"):
        gpt2.hf_config_from_model(model, VOCAB)


def test_unreadable_folders_are_refused_naming_the_file(tmp_path, cli, capsys):
    assert issubclass(gpt2.ConversionError, JaxlmError)  # one line from the command lines
    folder = tmp_path / "hf"
    _hf_model(True).save_pretrained(folder)
    capsys.readouterr()  # its progress bar
    config = folder / "config.json"
    good = config.read_text()
    index = folder / gpt2.HF_INDEX
    outside = write_arrays(tmp_path / "outside.safetensors", {"wte.weight": np.ones(2)}, {})
    cases = [
        (config, "{not json", rf"{config}: not valid JSON"),
        (config, "[1, 2]", rf"{config}: expected a JSON object"),
        (index, "garbage", rf"{index}: not valid JSON"),
        (index, "{}", rf"{index}: no weight_map"),
    ]
    for name in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors"):
        weight_map = {"transformer.wte.weight": name}
        cases.append((index, json.dumps({"weight_map": weight_map}), f"{index}: .*leaves"))
    for file, text, message in cases:
        config.write_text(good)
        index.unlink(missing_ok=True)
        file.write_text(text)
        with pytest.raises(gpt2.ConversionError, match=message):
            gpt2.hf_to_jaxlm(folder, tmp_path / "never")
        assert cli(["gpt2", "to-jaxlm", str(folder), str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {file}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()


def test_command_line(tmp_path, ids):
    spec = importlib.util.spec_from_file_location("checkpoint_cli", ROOT / "tools/checkpoint.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    hf = _hf_model(True, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    assert cli.main(["gpt2", "to-jaxlm", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    assert cli.main(["gpt2", "from-jaxlm", str(tmp_path / "run"), str(tmp_path / "hf2")]) == 0
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf2").eval()
    np.testing.assert_allclose(_hf_logits(again, ids), _hf_logits(hf, ids), atol=TOLERANCE)


def test_half_precision_weights_become_float32_parameters():
    model = _hf_model(tied=True)
    half = {k: v.detach().half().numpy() for k, v in model.state_dict().items()}
    config = gpt2.model_config_from_hf(model.config.to_dict())
    params = gpt2.params_from_hf(half, config)
    leaves = jax.tree.leaves(params)
    assert leaves and all(x.dtype == np.float32 for x in leaves)
    np.testing.assert_array_equal(params["embed"]["embedding"], half["transformer.wte.weight"])


@pytest.mark.heavy
def test_a_converted_gpt2_fine_tunes_and_evaluates_with_its_own_tokenizer(tmp_path):
    """A tiny random GPT-2 with a GPT-2-format tokenizer (a byte-level BPE trained on the
    built-in corpus: GPT-2's own files cannot be downloaded here), converted by the command
    line, fine-tuned 20 steps by python -m jaxlm.train and scored by evaluate_run (what
    python -m jaxlm.evaluate prints)."""
    from jaxlm.checkpoints.__main__ import main as checkpoint_cli
    from jaxlm.data import builders
    from jaxlm.data.subword import SubwordTokenizer
    from jaxlm.train.evaluate import evaluate_run

    tok = SubwordTokenizer.train_bpe(builders.builtin_text(), vocab_size=320)
    hf_dir = tmp_path / "hf"
    config = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    tok.save_gpt2_files(hf_dir)
    assert checkpoint_cli(["gpt2", "to-jaxlm", str(hf_dir), str(tmp_path / "gpt2")]) == 0
    converted = checkpoints.read_meta(tmp_path / "gpt2")
    assert converted["tokenizer"]["kind"] == "gpt2"
    assert converted["config"]["data"]["tokenizer_path"] == str(hf_dir.resolve())
    before = evaluate_run(tmp_path / "gpt2")  # the converted checkpoint scores as it is
    assert before["unit"] == "token" and 0 < before["loss"] < 2 * np.log(tok.vocab_size)

    workdir = tmp_path / "ft"
    model = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "max_len": 32, "dropout": 0.0}
    cmd = [
        sys.executable,
        "-m",
        "jaxlm.train",
        f"--config={ROOT}/configs/gpt2.py:smoke",
        f"--workdir={workdir}",
        f"--config.init_from={tmp_path / 'gpt2'}",
        f"--config.data.tokenizer_path={hf_dir}",
        *(f"--config.model.{k}={v}" for k, v in model.items()),
        "--config.model.attention_dropout=0.0",
        "--config.data.seq_len=32",
        "--config.train.num_steps=20",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=20",
        "--config.train.sample_tokens=8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Read the GPT-2 tokenizer ({tok.vocab_size} tokens) from {hf_dir}" in out.stdout
    assert f"{tok.vocab_size} tokens keep their trained rows; 0 new tokens" in out.stdout
    assert "Final validation loss" in out.stdout and "bits per byte" in out.stdout
    status = json.loads((workdir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 20
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert json.loads((workdir / "tokenizer.json").read_text())["kind"] == "gpt2"
    after = evaluate_run(workdir)
    final = status["final"]
    assert after["loss"] == pytest.approx(final["validation_loss"], rel=1e-5)
    assert after["loss"] < before["loss"]  # fine-tuned on this text: it fits it better
    assert after["bits_per_byte"] == pytest.approx(final["validation_bits_per_byte"], rel=1e-5)
    assert after["tokens"] == before["tokens"] and after["bytes"] == before["bytes"]
    # And back out: the fine-tuned run exports with GPT-2's tokenizer files beside the model.
    out = gpt2.jaxlm_to_hf(workdir, tmp_path / "exported")
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(str(out))
    text = "The fine-tuned model's 🙂 tokenizer\n"
    assert hf_tok(text)["input_ids"] == tok.encode(text).tolist()
    assert transformers.GPT2LMHeadModel.from_pretrained(out).config.vocab_size == tok.vocab_size


def test_a_gpt2_converted_without_its_tokenizer_loads_and_fine_tunes_with_gpt2s(tmp_path):
    """Folders without tokenizer files give a record of ids (as every conversion did before the
    gpt2 tokenizer): the model loads, evaluation says why it cannot run, and a gpt2 tokenizer
    of the same size fine-tunes it."""
    from jaxlm.data import builders
    from jaxlm.data.subword import SubwordTokenizer
    from jaxlm.errors import CheckpointError, IncompatibleCheckpoint
    from jaxlm.train.evaluate import evaluate_run

    tok = SubwordTokenizer.train_bpe(builders.builtin_text()[:50_000], vocab_size=260)
    config = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=16, n_embd=8, n_layer=1, n_head=2
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    gpt2.hf_to_jaxlm(tmp_path / "hf", tmp_path / "run")
    meta = checkpoints.read_meta(tmp_path / "run")
    assert meta["tokenizer"] == {
        "kind": "gpt2_bpe",
        "vocab_size": tok.vocab_size,
        "source": str(tmp_path / "hf"),
    }
    assert checkpoints.load_run(tmp_path / "run").tokenizer is None
    with pytest.raises(CheckpointError, match="its tokenizer is not one jaxlm can read"):
        evaluate_run(tmp_path / "run")
    state, _ = checkpoints.load_state(tmp_path / "run", parts=("params",))
    tok.save_gpt2_files(tmp_path / "files")
    gpt2_tok = SubwordTokenizer.from_gpt2(tmp_path / "files")
    params, mapping = checkpoints.load_pretrained(tmp_path / "run", state["params"], gpt2_tok)
    assert mapping.kept == tok.vocab_size and not mapping.new and not mapping.dropped
    smaller = SubwordTokenizer.train_bpe(builders.builtin_text()[:50_000], vocab_size=258)
    smaller.kind = "gpt2"
    with pytest.raises(IncompatibleCheckpoint, match=r"converted without its tokenizer \(260 ids"):
        checkpoints.load_pretrained(tmp_path / "run", state["params"], smaller)
