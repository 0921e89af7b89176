"""The n-gram run: ``python -m jaxlm.train --config=configs/ngram.py`` lands here.

A temporary home: the run belongs with the training loop (``jaxlm/train/``) and will move there.
Nothing in :mod:`jaxlm.models` imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from jaxlm.models import get_model
from jaxlm.models.ngram import arpa
from jaxlm.models.ngram.model import NGramModel


def split_metrics(model: NGramModel, tokens: Any) -> dict[str, float]:
    """Loss (nats per token), bits per token, perplexity and token count of one split.

    Args:
      model: the model.
      tokens: the split's token ids.

    Returns:
      ``{"loss", "bits", "perplexity", "tokens"}``, reduced as ``(sum, count)``.

    Example:
      >>> import numpy as np
      >>> from jaxlm.models.ngram import build
      >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
      >>> model = build(tokens, vocab_size=5, order=3, eos_id=0, method="kneser_ney")
      >>> round(split_metrics(model, np.array([2, 4, 0]))["perplexity"], 3)
      1.561
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
    ``<unk>`` are those of the neural models), builds the model that ``config.model`` describes
    (:class:`~jaxlm.models.ngram.NGramLM`, through :func:`jaxlm.models.get_model`), and writes
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

    # The model section is checked before the corpus is prepared (which gives the vocabulary).
    spec = get_model(config.model, vocab_size=1)
    corpus = data.load_corpus(config.data)
    tok = corpus.tokenizer
    spec = dataclasses.replace(spec, vocab_size=tok.vocab_size)
    eos_id = getattr(tok, "eos_id", None)
    workdir.mkdir(parents=True, exist_ok=True)
    mon = monitor.Monitor(workdir, total_steps=0, tensorboard=False)
    mon.status("building", 0)
    t0 = time.perf_counter()
    model = spec.fit(corpus.train, eos_id=eos_id, vocab=list(tok.vocab))
    build_seconds = time.perf_counter() - t0
    print(
        f"Built a {spec.order}-gram {spec.method} model on {corpus.name} ({len(corpus.train):,} "
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
    if spec.write_arpa:
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
