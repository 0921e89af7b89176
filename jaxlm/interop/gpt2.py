"""Hugging Face GPT-2 <-> jaxlm Transformer, through safetensors and config.json.

GPT-2 is a pre-LayerNorm decoder with learned positions, a tanh-approximated GELU MLP and tied
input/output embeddings; :class:`jaxlm.models.transformer.Transformer` with ``norm="layernorm"``,
``positions="learned"`` is the same function. The mapping (GPT-2 ``Conv1D`` weights are stored
``[in, out]``, as flax ``Dense`` kernels are, so no transposes):

====================================  =======================================
Hugging Face (``transformer.`` prefix)   jaxlm ``params``
====================================  =======================================
``wte.weight`` ``[V, E]``             ``embed/embedding``
``wpe.weight`` ``[P, E]``             ``pos_embed`` (``max_len = P``)
``h.<i>.ln_1.{weight,bias}``          ``blocks_<i>/norm_attn/{scale,bias}``
``h.<i>.attn.c_attn.{weight,bias}``   ``blocks_<i>/qkv/{kernel,bias}``
``h.<i>.attn.c_proj.{weight,bias}``   ``blocks_<i>/attn_out/{kernel,bias}``
``h.<i>.ln_2.{weight,bias}``          ``blocks_<i>/norm_mlp/{scale,bias}``
``h.<i>.mlp.c_fc.{weight,bias}``      ``blocks_<i>/mlp_fc/{kernel,bias}``
``h.<i>.mlp.c_proj.{weight,bias}``    ``blocks_<i>/mlp_proj/{kernel,bias}``
``ln_f.{weight,bias}``                ``final_norm/{scale,bias}``
``lm_head.weight`` ``[V, E]``         ``head/kernel`` ``[E, V]`` (untied models only)
====================================  =======================================

Only ``config.json``, ``*.safetensors`` and the tokenizer's JSON and text files are read
(``pytorch_model.bin`` is refused: it would need unpickling). Neither direction needs
``torch`` or ``transformers``. GPT-2's tokenizer (``vocab.json`` + ``merges.txt``, or
``tokenizer.json``) is stored with the checkpoint when the folder has it
(:class:`jaxlm.data.subword.SubwordTokenizer`, kind ``gpt2``).

Example:
  >>> from jaxlm.interop import gpt2
  >>> gpt2.hf_to_jaxlm("hf/gpt2", "runs/gpt2")  # doctest: +SKIP
  PosixPath('runs/gpt2/checkpoints/0')
  >>> gpt2.jaxlm_to_hf("runs/gpt2", "hf/gpt2_again")  # doctest: +SKIP
  PosixPath('hf/gpt2_again')
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxlm.checkpoints.tools.arrays import read_arrays, write_arrays
from jaxlm.data.subword import GPT2_FILES, TOKENIZER_JSON, SubwordTokenizer
from jaxlm.data.tokenizers import GPT2_RECORD
from jaxlm.errors import ConversionError

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
JAXLM_CONFIG = "jaxlm_config.json"
JAXLM_TOKENIZER = "jaxlm_tokenizer.json"
# GPT-2 activations that are the tanh-approximated GELU our Transformer uses.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
EPSILON = 1e-5  # jaxlm's LayerNorm epsilon, and GPT-2's default

_BLOCK = {
    "ln_1.weight": ("norm_attn", "scale"),
    "ln_1.bias": ("norm_attn", "bias"),
    "attn.c_attn.weight": ("qkv", "kernel"),
    "attn.c_attn.bias": ("qkv", "bias"),
    "attn.c_proj.weight": ("attn_out", "kernel"),
    "attn.c_proj.bias": ("attn_out", "bias"),
    "ln_2.weight": ("norm_mlp", "scale"),
    "ln_2.bias": ("norm_mlp", "bias"),
    "mlp.c_fc.weight": ("mlp_fc", "kernel"),
    "mlp.c_fc.bias": ("mlp_fc", "bias"),
    "mlp.c_proj.weight": ("mlp_proj", "kernel"),
    "mlp.c_proj.bias": ("mlp_proj", "bias"),
}
# Buffers older GPT-2 checkpoints store (the causal mask); not parameters.
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


# --------------------------------------------------------------------------------------------
# Configs.


def model_config_from_hf(hf: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The jaxlm ``config.model`` fields of a GPT-2 ``config.json``.

    Args:
      hf: the parsed ``config.json``.
      source: the file's name, for error messages.

    Returns:
      ``{"name": "transformer", "embed_dim", "num_layers", "num_heads", "mlp_dim", "max_len",
      "norm": "layernorm", "positions": "learned", "tie_embeddings", "dropout",
      "attention_dropout"}`` and
      ``vocab_size`` (the tokenizer's, kept beside the model fields).

    Raises:
      ConversionError: the model is not one our Transformer computes exactly.
    """
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConversionError(f"{source}: model_type {model_type!r}; only 'gpt2' converts")
    act = hf.get("activation_function", "gelu_new")
    checks = [
        (act in TANH_GELU, f"activation_function {act!r} (expected one of {TANH_GELU})"),
        (
            abs(hf.get("layer_norm_epsilon", EPSILON) - EPSILON) < 1e-12,
            f"layer_norm_epsilon {hf.get('layer_norm_epsilon')} (jaxlm uses {EPSILON})",
        ),
        (hf.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx"),
        (hf.get("n_embd", 768) % hf.get("n_head", 12) == 0, "n_embd not divisible by n_head"),
    ]
    problems = [what for ok, what in checks if not ok]
    if problems:
        raise ConversionError(f"{source}: cannot convert exactly: " + "; ".join(problems))
    n_embd = int(hf.get("n_embd", 768))
    return {
        "name": "transformer",
        "embed_dim": n_embd,
        "num_layers": int(hf.get("n_layer", 12)),
        "num_heads": int(hf.get("n_head", 12)),
        "mlp_dim": int(hf.get("n_inner") or 4 * n_embd),
        "max_len": int(hf.get("n_positions", 1024)),
        "norm": "layernorm",
        "positions": "learned",
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "dropout": float(hf.get("resid_pdrop", 0.1)),
        "attention_dropout": float(hf.get("attn_pdrop", 0.1)),
        "vocab_size": int(hf.get("vocab_size", 50257)),
    }


def hf_config_from_model(model: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A GPT-2 ``config.json`` for a jaxlm Transformer's ``config.model`` fields.

    Args:
      model: ``config.model`` as JSON (``name`` must be ``transformer``, with ``layernorm``
        and ``learned`` positions).
      vocab_size: the number of token ids.

    Returns:
      The ``config.json`` contents (``GPT2LMHeadModel``).

    Raises:
      ConversionError: the model is not a GPT-2 (another family, RMSNorm, rotary positions).
    """
    problems = []
    if model.get("name") != "transformer":
        problems.append(f"model.name {model.get('name')!r} (expected 'transformer')")
    if model.get("norm", "layernorm") != "layernorm":
        problems.append(f"model.norm {model.get('norm')!r} (GPT-2 has LayerNorm)")
    if model.get("positions", "learned") != "learned":
        problems.append(f"model.positions {model.get('positions')!r} (GPT-2 learns positions)")
    if problems:
        raise ConversionError("not expressible as GPT-2: " + "; ".join(problems))
    e = int(model["embed_dim"])
    dropout = float(model.get("dropout", 0.0))
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": int(vocab_size),
        "n_positions": int(model.get("max_len", 512)),
        "n_embd": e,
        "n_layer": int(model["num_layers"]),
        "n_head": int(model["num_heads"]),
        "n_inner": int(model.get("mlp_dim") or 4 * e),
        "activation_function": "gelu_new",
        "layer_norm_epsilon": EPSILON,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": float(model.get("attention_dropout", 0.0)),
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(model.get("tie_embeddings", True)),
        "bos_token_id": int(vocab_size) - 1,
        "eos_token_id": int(vocab_size) - 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }


# --------------------------------------------------------------------------------------------
# Parameters.


def params_from_hf(
    weights: dict[str, np.ndarray], model: dict[str, Any], source: str = "model.safetensors"
) -> dict[str, Any]:
    """Maps GPT-2 weights (names with or without ``transformer.``) onto jaxlm parameters.

    Args:
      weights: ``{name: array}`` as in the safetensors file.
      model: from :func:`model_config_from_hf`.
      source: the file's name, for error messages.

    Returns:
      The jaxlm ``params`` tree, float32 whatever the file's dtype (a float16 or bfloat16 export
      would otherwise give float16 parameters and optimizer state).

    Raises:
      ConversionError: a weight is missing, unexpected or of the wrong shape.
    """
    w = {}
    for name, value in weights.items():
        short = name.removeprefix("transformer.")
        if not _IGNORED.match(short):
            w[short] = np.asarray(value, np.float32)  # jaxlm stores parameters in float32
    e, v = model["embed_dim"], model["vocab_size"]
    params: dict[str, Any] = {}
    expected: dict[str, tuple[int, ...]] = {}

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        expected[name] = shape
        if name not in w:
            raise ConversionError(f"{source}: missing weight {name!r} (shape {shape})")
        if w[name].shape != shape:
            raise ConversionError(f"{source}: {name} has shape {w[name].shape}; expected {shape}")
        return w[name]

    params["embed"] = {"embedding": take("wte.weight", (v, e))}
    params["pos_embed"] = take("wpe.weight", (model["max_len"], e))
    shapes = {
        "ln_1.weight": (e,), "ln_1.bias": (e,), "ln_2.weight": (e,), "ln_2.bias": (e,),
        "attn.c_attn.weight": (e, 3 * e), "attn.c_attn.bias": (3 * e,),
        "attn.c_proj.weight": (e, e), "attn.c_proj.bias": (e,),
        "mlp.c_fc.weight": (e, model["mlp_dim"]), "mlp.c_fc.bias": (model["mlp_dim"],),
        "mlp.c_proj.weight": (model["mlp_dim"], e), "mlp.c_proj.bias": (e,),
    }  # fmt: skip
    for i in range(model["num_layers"]):
        block: dict[str, dict[str, np.ndarray]] = {}
        for hf_name, (module, leaf) in _BLOCK.items():
            block.setdefault(module, {})[leaf] = take(f"h.{i}.{hf_name}", shapes[hf_name])
        params[f"blocks_{i}"] = block
    params["final_norm"] = {"scale": take("ln_f.weight", (e,)), "bias": take("ln_f.bias", (e,))}
    if not model["tie_embeddings"]:
        params["head"] = {"kernel": take("lm_head.weight", (v, e)).T.copy()}
    elif "lm_head.weight" in w:
        expected["lm_head.weight"] = (v, e)
        if not np.array_equal(w["lm_head.weight"], w["wte.weight"]):
            raise ConversionError(
                f"{source}: tie_word_embeddings is true but lm_head.weight differs from wte.weight"
            )
    unexpected = sorted(set(w) - set(expected))
    if unexpected:
        raise ConversionError(f"{source}: unexpected weights {unexpected[:5]}")
    return params


def params_to_hf(params: dict[str, Any], model: dict[str, Any]) -> dict[str, np.ndarray]:
    """jaxlm Transformer parameters as GPT-2 weights (as ``GPT2LMHeadModel`` names them).

    Args:
      params: the jaxlm ``params`` tree (numpy or jax arrays).
      model: ``config.model`` fields (see :func:`hf_config_from_model`).

    Returns:
      ``{"transformer.wte.weight": ..., ...}``; ``lm_head.weight`` only for untied models
      (``transformers`` ties it to ``wte`` on load otherwise).
    """
    p = jax.tree.map(np.asarray, params)
    out = {
        "transformer.wte.weight": p["embed"]["embedding"],
        "transformer.wpe.weight": p["pos_embed"],
        "transformer.ln_f.weight": p["final_norm"]["scale"],
        "transformer.ln_f.bias": p["final_norm"]["bias"],
    }
    for i in range(int(model["num_layers"])):
        block = p[f"blocks_{i}"]
        for hf_name, (module, leaf) in _BLOCK.items():
            out[f"transformer.h.{i}.{hf_name}"] = block[module][leaf]
    if not model.get("tie_embeddings", True):
        out["lm_head.weight"] = p["head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Folders.


def read_json_object(file: Path) -> dict[str, Any]:
    """The JSON object a model folder's file holds (``config.json``, the index, ...).

    Args:
      file: the path.

    Returns:
      The parsed object.

    Raises:
      ConversionError: the file is not UTF-8 JSON or holds no object (the message names it).

    Example:
      >>> import tempfile
      >>> file = Path(tempfile.mkdtemp()) / "config.json"
      >>> _ = file.write_text('{"n_layer": 2}')
      >>> read_json_object(file)
      {'n_layer': 2}
      >>> _ = file.write_text("{n_layer: 2}")
      >>> read_json_object(file)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConversionError: .../config.json: not valid JSON (Expecting property name ...)
    """
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ConversionError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def _weight_files(folder: Path) -> list[str]:
    """The files a sharded checkpoint's index names, each a relative path inside ``folder``."""
    index_file = folder / HF_INDEX
    weight_map = read_json_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(
            f'{index_file}: no weight_map (expected {{"weight_map": {{weight name: file}}}})'
        )
    for name in weight_map.values():
        if not isinstance(name, str) or not name:
            raise ConversionError(f"{index_file}: weight file {name!r} is not a file name")
        path = PurePosixPath(name)
        # Lexically, not through resolve(): the Hugging Face cache links files to blobs/.
        if path.is_absolute() or ".." in path.parts:
            raise ConversionError(
                f"{index_file}: weight file {name!r} leaves the model folder {folder} (expected "
                "a relative path inside it)"
            )
    return sorted(set(weight_map.values()))


def read_hf_folder(folder: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a Hugging Face model folder's ``config.json`` and safetensors weights.

    Args:
      folder: holds ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json`` with its files).

    Returns:
      ``(weights, hf_config)``.

    Raises:
      FileNotFoundError: no config.json or no safetensors weights (a folder with only
        ``pytorch_model.bin`` is refused: reading it would mean unpickling).
      ConversionError: config.json or the index is not a JSON object, or the index names a
        file outside the folder (absolute, or through ``..``); the message names the file.
      CheckpointError: a weights file is truncated or not safetensors.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    hf = read_json_object(config_file)
    if (folder / HF_INDEX).is_file():
        files = _weight_files(folder)
    elif (folder / HF_WEIGHTS).is_file():
        files = [HF_WEIGHTS]
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"{folder}: no {HF_WEIGHTS} or {HF_INDEX} (found {found}); only safetensors weights "
            "are read, never pickled ones such as pytorch_model.bin. Re-save the model with "
            "save_pretrained(..., safe_serialization=True)."
        )
    weights: dict[str, np.ndarray] = {}
    for name in files:
        arrays, _ = read_arrays(folder / name)
        weights.update(arrays)
    return weights, hf


def write_hf_folder(
    folder: str | Path, weights: dict[str, np.ndarray], hf_config: dict[str, Any]
) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` as ``save_pretrained`` would.

    Args:
      folder: the output folder (created).
      weights: from :func:`params_to_hf`.
      hf_config: from :func:`hf_config_from_model`.

    Returns:
      The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    write_arrays(folder / HF_WEIGHTS, weights, {"format": "pt"})
    return folder


def has_tokenizer_files(folder: Path) -> bool:
    """Whether a Hugging Face folder holds GPT-2's tokenizer (``tokenizer.json``, or
    ``vocab.json`` + ``merges.txt``)."""
    return (folder / TOKENIZER_JSON).is_file() or all((folder / f).is_file() for f in GPT2_FILES)


def build_model(model: dict[str, Any] | ml_collections.ConfigDict, vocab_size: int):
    """The jaxlm Transformer that ``config.model`` describes, through the model registry.

    Args:
      model: ``config.model`` fields (JSON or ConfigDict).
      vocab_size: the number of token ids.

    Returns:
      A :class:`jaxlm.models.transformer.Transformer` (float32).
    """
    from jaxlm.models import get_model

    return get_model(ml_collections.ConfigDict(dict(model)), vocab_size)


def hf_to_jaxlm(
    folder: str | Path,
    out_workdir: str | Path,
    *,
    tokenizer: dict[str, Any] | None = None,
    step: int = 0,
) -> Path:
    """Converts a Hugging Face GPT-2 folder into a jaxlm checkpoint of our Transformer.

    The checkpoint holds the parameters, a fresh optimizer state for the config's optimizer
    (Adam by default), step ``step`` and a config whose ``model`` section describes the
    Transformer. The tokenizer is ``tokenizer`` when given, else the ``jaxlm_tokenizer.json``
    that :func:`jaxlm_to_hf` writes, else GPT-2's own (``tokenizer.json``, or ``vocab.json`` +
    ``merges.txt``: kind ``gpt2``, and ``config.data.tokenizer_path`` is the folder, so the
    checkpoint evaluates and fine-tunes as it is), else a ``{"kind": "gpt2_bpe",
    "vocab_size": V}`` record (the model loads; nothing encodes text for it).

    Args:
      folder: a Hugging Face model folder (see :func:`read_hf_folder`).
      out_workdir: run folder for the checkpoint.
      tokenizer: a jaxlm tokenizer's JSON to store with it.
      step: the checkpoint's step.

    Returns:
      The checkpoint's folder.
    """
    from jaxlm import checkpoints, state
    from jaxlm.config import base_config

    folder = Path(folder)
    weights, hf = read_hf_folder(folder)
    model = model_config_from_hf(hf, str(folder / "config.json"))
    vocab_size = model.pop("vocab_size")
    params = params_from_hf(weights, dict(model, vocab_size=vocab_size), str(folder))
    saved_config = folder / JAXLM_CONFIG
    if saved_config.is_file():
        saved = read_json_object(saved_config)
        config = checkpoints.run_config(checkpoints.meta.upgrade({"config": saved})["config"])
        config.unlock()
    else:
        config = base_config("transformer")
        config.name = "gpt2"
        config.data.tokenizer = GPT2_RECORD
    config.data.seq_len = min(config.data.seq_len, model["max_len"])  # a window the model takes
    for key, value in model.items():
        config.model[key] = value
    if tokenizer is None and (folder / JAXLM_TOKENIZER).is_file():
        tokenizer = read_json_object(folder / JAXLM_TOKENIZER)
    if tokenizer is None and has_tokenizer_files(folder):
        tok = SubwordTokenizer.from_gpt2(folder)
        if tok.vocab_size > vocab_size:
            raise ConversionError(
                f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model's embedding "
                f"only {vocab_size} rows"
            )
        tokenizer = tok.to_json()
        config.data.tokenizer, config.data.tokenizer_path = "gpt2", str(folder.resolve())
    if tokenizer is None:  # ids without a vocabulary: the model loads, nothing can encode
        tokenizer = {"kind": GPT2_RECORD, "vocab_size": vocab_size, "source": str(folder)}
    config.lock()
    # The trainer's own state builder: the optimizer state and RNG are those a run of this
    # config starts from, so the checkpoint resumes and fine-tunes like any other.
    fresh = jax.jit(state.build(config, vocab_size).init)(params)
    train_state = jax.device_get(fresh.replace(step=np.int32(step)))
    meta = checkpoints.make_meta(config, tokenizer, converted_from=str(folder))
    return checkpoints.write_checkpoint(out_workdir, step, train_state, meta)


def jaxlm_to_hf(path: str | Path, out_folder: str | Path, *, step: int | None = None) -> Path:
    """Converts a jaxlm Transformer checkpoint into a Hugging Face GPT-2 folder.

    Writes ``config.json`` and ``model.safetensors`` (loadable with
    ``GPT2LMHeadModel.from_pretrained``), plus ``jaxlm_config.json`` and
    ``jaxlm_tokenizer.json`` so :func:`hf_to_jaxlm` restores the run's config and tokenizer;
    a run with a byte-level BPE (``bpe`` or ``gpt2``) also gets GPT-2's ``vocab.json`` and
    ``merges.txt``, which ``GPT2TokenizerFast.from_pretrained`` reads.

    Args:
      path: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      out_folder: the output folder.
      step: which checkpoint of a run folder.

    Returns:
      The output folder.
    """
    from jaxlm import checkpoints

    ckpt = checkpoints.resolve(path, step)
    state, meta = checkpoints.load_state(ckpt, parts=("params",))
    params = state["params"]
    model = meta["config"]["model"]
    vocab_size = int(np.shape(params["embed"]["embedding"])[0])
    hf = hf_config_from_model(model, vocab_size)
    out = write_hf_folder(out_folder, params_to_hf(params, model), hf)
    (out / JAXLM_CONFIG).write_text(json.dumps(meta["config"], indent=1) + "\n")
    (out / JAXLM_TOKENIZER).write_text(json.dumps(meta["tokenizer"]) + "\n")
    if meta["tokenizer"].get("kind") in ("bpe", "gpt2"):  # GPT2TokenizerFast reads these
        SubwordTokenizer.from_json(meta["tokenizer"]).save_gpt2_files(out)
    return out
