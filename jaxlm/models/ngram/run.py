"""The n-gram run: ``python -m jaxlm.train --config=configs/ngram.py`` lands here.

A temporary home: the run belongs with the training loop (``jaxlm/train/``) and will move there.
Nothing in :mod:`jaxlm.models` imports this module.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.models.ngram import arpa
from jaxlm.models.ngram.model import NGramModel
from jaxlm.models.ngram.smoothing import METHODS, build


def _config_discount(method: str, discount: Sequence[float], order: int) -> Any:
    """``config.model.discount`` (a flat tuple) as :func:`estimate` takes it; () estimates."""
    d = tuple(float(x) for x in discount)
    if not d:
        return None
    if method == "modified_kneser_ney":
        if len(d) == 3:
            return d
        if len(d) == 3 * order:
            return np.array(d).reshape(order, 3)
        raise ValueError(
            f"config.model.discount: modified_kneser_ney takes 3 values (D1, D2, D3+) or "
            f"3 x order = {3 * order}, got {len(d)}"
        )
    if method == "add_k":
        raise ValueError("config.model.discount: add_k takes config.model.k, not a discount")
    if len(d) == 1:
        return d[0]
    if len(d) == order:
        return d
    raise ValueError(f"config.model.discount: {method} takes 1 value or {order}, got {len(d)}")


def split_metrics(model: NGramModel, tokens: Any) -> dict[str, float]:
    """Loss (nats per token), bits per token, perplexity and token count of one split.

    Args:
      model: the model.
      tokens: the split's token ids.

    Returns:
      ``{"loss", "bits", "perplexity", "tokens"}``, reduced as ``(sum, count)``.

    Example:
      >>> split_metrics(model, corpus.test)["perplexity"]  # doctest: +SKIP
    """
    total, count = model.nll(tokens)
    loss = total / max(count, 1)
    return {
        "loss": loss,
        "bits": loss / math.log(2),
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": float(count),
    }


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Builds the n-gram model a config describes, evaluates it and saves it to ``workdir``.

    Reads the corpus through ``jaxlm.data.load_corpus(config.data)`` (so tokens, ``<eos>`` and
    ``<unk>`` are those of the neural models), builds the model from ``config.model`` (``order``,
    ``method``, ``discount``, ``discount_fallback``, ``k``, ``cutoffs``, ``add_bos``), and writes
    ``model.npz`` (exact), ``model.arpa`` (if ``config.model.write_arpa``), ``config.json``,
    ``tokenizer.json``, ``metrics.jsonl`` and ``status.json``. Re-running a finished run with the
    same config returns its results at once.

    Args:
      config: a run config (see ``configs/ngram.py``) with ``config.model.name == "ngram"``.
      workdir: the run folder.

    Returns:
      ``validation_loss``/``_bits``/``_perplexity`` and ``test_...`` (nats and bits per token),
      ``build_seconds``, ``num_ngrams`` and the discounts used.

    Example:
      >>> import importlib.util
      >>> spec = importlib.util.spec_from_file_location("c", "configs/ngram.py")
      >>> cfg = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfg)
      >>> train_and_evaluate(cfg.get_config("smoke"), "/tmp/ngram_smoke")  # doctest: +SKIP
    """
    from jaxlm import data, monitor
    from jaxlm.data.tokenizers import save_tokenizer

    workdir = Path(workdir)
    m = config.model
    config_data = json.loads(config.to_json())
    status = monitor.read_status(workdir) or {}
    saved_config = workdir / "config.json"
    if (
        status.get("state") == "finished"
        and (workdir / "model.npz").exists()
        and saved_config.exists()
        and json.loads(saved_config.read_text()) == config_data
    ):
        print(f"Run in {workdir} already finished; nothing to do.", flush=True)
        final = status.get("final", {})
        for key, value in final.items():
            print(f"  {key}: {value}", flush=True)
        return final

    if m.method not in METHODS:
        raise ValueError(f"config.model.method: unknown {m.method!r}; expected one of {METHODS}")
    if not 1 <= m.order:
        raise ValueError(f"config.model.order: must be >= 1, got {m.order}")
    discount = _config_discount(m.method, m.discount, m.order)
    corpus = data.load_corpus(config.data)
    tok = corpus.tokenizer
    eos_id = getattr(tok, "eos_id", None)
    workdir.mkdir(parents=True, exist_ok=True)
    mon = monitor.Monitor(workdir, total_steps=0, tensorboard=False)
    mon.status("building", 0)
    t0 = time.perf_counter()
    model = build(
        corpus.train,
        tok.vocab_size,
        m.order,
        method=m.method,
        discount=discount,
        k=m.k,
        cutoffs=tuple(m.cutoffs) or None,
        discount_fallback=tuple(m.discount_fallback) or None,
        eos_id=eos_id,
        add_bos=m.add_bos,
        vocab=list(tok.vocab),
    )
    build_seconds = time.perf_counter() - t0
    print(
        f"Built a {m.order}-gram {m.method} model on {corpus.name} ({len(corpus.train):,} "
        f"{tok.kind} tokens, vocabulary {tok.vocab_size:,}) in {build_seconds:.2f} s; "
        f"n-grams per order {model.num_ngrams}; discounts {model.info['discounts']}"
        + (
            f" (orders {model.info['discount_fallback_orders']} use the fallback)"
            if model.info["discount_fallback_orders"]
            else ""
        ),
        flush=True,
    )
    val = split_metrics(model, corpus.validation)
    test = split_metrics(model, corpus.test)
    mon.write(0, val, split="validation", echo=False)
    mon.write(0, test, split="test", echo=False)

    model.save(workdir / "model.npz")
    if m.write_arpa:
        arpa.write_arpa(model, workdir / "model.arpa")
    saved_config.write_text(config.to_json(indent=1))
    save_tokenizer(tok, workdir / "tokenizer.json")
    unit = tok.kind
    final = {
        "step": 0,
        "validation_loss": val["loss"],
        "validation_bits": val["bits"],
        "validation_perplexity": val["perplexity"],
        "test_loss": test["loss"],
        "test_bits": test["bits"],
        "test_perplexity": test["perplexity"],
        "build_seconds": build_seconds,
        "num_ngrams": model.num_ngrams,
        "discounts": model.info["discounts"],
    }
    mon.status("finished", 0, final=final)
    mon.close()
    print(
        f"Final validation loss {val['loss']:.4f} nats/{unit} ({val['bits']:.4f} bits/{unit}, "
        f"perplexity {val['perplexity']:.2f}); test loss {test['loss']:.4f} nats/{unit} "
        f"({test['bits']:.4f} bits/{unit}, perplexity {test['perplexity']:.2f})",
        flush=True,
    )
    return final
