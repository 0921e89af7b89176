"""The run of a count-based model: ``python -m jaxlm.train --config=configs/ngram.py``.

The same run folder, data and final report as the neural runs
(:mod:`jaxlm.train.workdir`): the corpus through :func:`jaxlm.data.load_corpus` (so tokens,
``<eos>`` and ``<unk>`` are the neural models'), the model from the registry
(:class:`~jaxlm.models.ngram.NGramLM`), scored with sums and counts
(:func:`jaxlm.train.evaluate.summarize`), saved as ``model.npz`` (exact) and ``model.arpa``
with their SHA-256 digests (``model.checksums.json``, written before the run is marked
finished). The end-of-run sample (``config.train.sample_*``) is printed and kept in the final
report, as the neural runs do.

:func:`run_ngram` is the whole run (``train_and_evaluate`` hands an n-gram config to it): it
imports neither flax nor orbax, and JAX only for a sample drawn with a temperature
(:func:`jaxlm.sampling.sample_logits`). While the model is evaluated and sampled, ``model.npz``
and the ARPA file are written, each on its own thread (numpy, Arrow, hashlib and the file
writes release the GIL); the ARPA file's digest is taken as it is written.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm import data, monitor
from jaxlm.checkpoints.checksums import (
    ChecksumMismatch,
    check_model_files,
    file_digest,
    write_model_checksums,
)
from jaxlm.checkpoints.layout import CONFIG_FILE, NGRAM_ARPA, NGRAM_MODEL, absolute
from jaxlm.config import validate
from jaxlm.errors import Preempted
from jaxlm.models import get_model
from jaxlm.models.ngram.counts import small_pages
from jaxlm.train import workdir as run_folder
from jaxlm.train.summary import summarize


def run_ngram(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """An n-gram run from its config, as :func:`jaxlm.train.train_and_evaluate` runs one.

    Validates the config, takes the workdir's lock, says so when the last run there died
    without a word, then :func:`train_ngram`. With nothing to checkpoint, a SIGTERM ends the
    process at once (status 143), one that came before this started stops it here.

    Args:
      config: a run config with ``config.model.name == "ngram"``.
      workdir: the run folder; relative to the working directory.

    Returns:
      :func:`train_ngram`'s final metrics.

    Raises:
      Preempted: a SIGTERM arrived before the run started.
      WorkdirBusy: another process is writing to ``workdir``.
      JaxlmError: bad input (config, corpus), or a full disk.
    """
    validate(config)
    run_folder.check_init_from(config)
    workdir = absolute(workdir)
    with run_folder.sole_writer(workdir):
        run_folder.report_previous(workdir)
        with _sigterm_ends_at_once() as early:
            if early:
                raise Preempted(f"SIGTERM before the n-gram run in {workdir} started")
            with small_pages():  # the whole run: build, files, scoring
                return train_ngram(config, workdir)


@contextlib.contextmanager
def _sigterm_ends_at_once() -> Iterator[bool]:
    """SIGTERM's default action while the run lasts; yields whether the command line's early
    handler (its ``raised``) already caught one. Off the main thread, signals stay as they are."""
    try:
        old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:
        yield False
        return
    try:
        yield bool(getattr(old, "raised", False))
    finally:
        signal.signal(signal.SIGTERM, old)


def train_ngram(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Builds the n-gram model a config describes, evaluates it and saves it to ``workdir``.

    Re-running a finished run with the same config returns its results at once, unless a model
    file is missing or differs from its saved digest: then it says which and builds again.

    Args:
      config: a run config with ``config.model.name == "ngram"``.
      workdir: the run folder (absolute).

    Returns:
      ``validation_loss``/``_bits``/``_perplexity`` and ``test_...`` (nats and bits per token),
      ``build_seconds``, ``num_ngrams`` and the discounts used.
    """
    final = run_folder.finished(workdir)
    saved = workdir / CONFIG_FILE
    if (
        final is not None
        and saved.exists()
        and json.loads(saved.read_text()) == json.loads(config.to_json())
    ):
        problem = _model_problem(workdir)
        if problem is None:
            return run_folder.print_finished(workdir, final)
        run_folder.log(f"{problem}; building the model again instead of reporting the old numbers")
    corpus = data.load_corpus(config.data)
    tok = corpus.tokenizer
    spec = get_model(config.model, tok.vocab_size)
    run_folder.prepare(workdir, config, tok)
    mon = monitor.Monitor(
        workdir, total_steps=0, tensorboard=False, heartbeat=monitor.HEARTBEAT_SECONDS
    )
    try:
        mon.status("building", 0)
        t0 = time.perf_counter()
        model = spec.fit(
            corpus.train,
            eos_id=getattr(tok, "eos_id", None),
            vocab=list(tok.vocab),
            scratch=workdir,
        )
        build_seconds = time.perf_counter() - t0
        _log_built(model, spec, corpus, build_seconds)
        # The files are written while the model is scored and sampled; leaving the block waits
        # for them (an error here too: "failed" is written after they are whole or failed).
        with concurrent.futures.ThreadPoolExecutor(2, "jaxlm-ngram-save") as pool:
            saving = _start_saving(pool, model, spec, workdir)
            val = summarize(*model.nll(corpus.validation), **corpus.counts.get("validation", {}))
            test = summarize(*model.nll(corpus.test), **corpus.counts.get("test", {}))
            mon.write(0, val, "validation", echo=False)
            mon.write(0, test, "test", echo=False)
            sample = _sample(model, tok, config)
            _finish_saving(workdir, saving)  # raises what writing them raised
        final = run_folder.final_report(
            0,
            val,
            test,
            build_seconds=build_seconds,
            num_ngrams=model.num_ngrams,
            discounts=model.info["discounts"],
            sample=sample,
        )
        mon.status("finished", 0, final=final)
    except BaseException as e:
        state = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        mon.status(state, 0, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        mon.close()
    run_folder.print_final(final, tok.unit)
    if final.get("sample"):
        run_folder.save_sample(workdir, final["sample"])
        run_folder.log(f"Sample:\n{final['sample']}")
    run_folder.write_report(workdir, config)
    return final


def _start_saving(
    pool: concurrent.futures.Executor, model: Any, spec: Any, workdir: Path
) -> tuple[float, dict[str, concurrent.futures.Future]]:
    """Starts writing ``model.npz`` and, when asked for, the ARPA file, each on its own worker;
    each future gives its file's SHA-256. Returns the start time and the futures by name."""
    from jaxlm.models.ngram import arpa

    def npz() -> str:
        model.save(workdir / NGRAM_MODEL)
        return file_digest(workdir / NGRAM_MODEL)

    saving = {NGRAM_MODEL: pool.submit(npz)}
    if spec.write_arpa:
        path = workdir / NGRAM_ARPA
        saving[NGRAM_ARPA] = pool.submit(
            arpa.write_arpa, model, path, precision=spec.arpa_precision
        )
    return time.perf_counter(), saving


def _finish_saving(
    workdir: Path, saving: tuple[float, dict[str, concurrent.futures.Future]]
) -> None:
    """Waits for the model files, then writes their digests (the run is not marked finished
    before they are all written) and says what was saved."""
    t0, futures = saving
    digests = {name: future.result() for name, future in futures.items()}
    write_model_checksums(workdir, list(digests), digests)
    sizes = ", ".join(
        f"{name} {(workdir / name).stat().st_size / 2**20:,.1f} MiB" for name in digests
    )
    run_folder.log(f"Saved {sizes} in {time.perf_counter() - t0:.2f} s")


def _sample(model: Any, tok: Any, config: ml_collections.ConfigDict) -> str:
    """The end-of-run sample the config asks for, as :func:`jaxlm.sampling.sample_text` draws
    it (that module imports JAX; the n-gram's own sampler needs it only for top-k or top-p)."""
    from jaxlm.models.ngram.sampling import sample_text

    t = config.train
    return sample_text(
        model, tok, t.sample_prompt, t.sample_tokens, config.seed,
        temperature=t.sample_temperature,
    )  # fmt: skip


def _model_problem(workdir: Path) -> str | None:
    """Why the saved model of a finished run cannot stand for its numbers (None when it can).

    A run saved before jaxlm wrote digests is accepted when its ``model.npz`` is there.
    """
    if not (workdir / NGRAM_MODEL).is_file():
        return f"{workdir / NGRAM_MODEL} is missing"
    try:
        check_model_files(workdir)
    except ChecksumMismatch as e:  # a file, or the checksums file itself, is damaged
        return str(e)
    return None


def _log_built(model: Any, spec: Any, corpus: data.Corpus, seconds: float) -> None:
    tok = corpus.tokenizer
    fell_back = model.info["discount_fallback_orders"]
    run_folder.log(
        f"Built a {spec.order}-gram {spec.method} model on {corpus.name} ({len(corpus.train):,} "
        f"{tok.kind} tokens, vocabulary {tok.vocab_size:,}) in {seconds:.2f} s; "
        f"n-grams per order {model.num_ngrams}; discounts {model.info['discounts']}"
        + (f" (orders {fell_back} use the fallback)" if fell_back else "")
        + (
            f"; counted in {model.info['memory']['chunks']} chunk(s) within memory_limit="
            f"{model.info['memory']['limit_bytes']:,} bytes"
            if "memory" in model.info
            else ""
        )
    )
