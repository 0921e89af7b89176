"""The run-folder protocol every run follows, neural or n-gram: the files written at the start,
the final report, and what a second run of a finished one prints.

Files (see :mod:`jaxlm.checkpoints.layout`): ``config.json`` and ``tokenizer.json`` at the start,
``metrics.jsonl``, ``tensorboard/`` and ``status.json`` as the run goes (:mod:`jaxlm.monitor`),
the model: ``checkpoints/`` or ``model.npz``; at the end ``sample.txt`` (the generated text) and
``report.html`` (:mod:`jaxlm.runs.report`, unless ``config.monitor.report`` is off).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm import monitor
from jaxlm.checkpoints.layout import CONFIG_FILE, TOKENIZER_FILE, resolve
from jaxlm.checkpoints.lock import exclusive
from jaxlm.data.tokenizers import save_tokenizer
from jaxlm.errors import CheckpointError, ConfigError


def log(*args: Any) -> None:
    """Prints on process 0 only (every process runs the loop)."""
    if monitor.is_writer():
        print(*args, flush=True)


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """``runs/<config.name>``; a fine-tuning run (``init_from`` set) gets its own
    ``runs/<config.name>_ft_<strategy>``, so it never lands in the run it starts from.

    Example:
      >>> from jaxlm.config import load_config
      >>> c = load_config("lstm"); default_workdir(c)
      'runs/lstm'
      >>> c.init_from = "runs/lstm"; default_workdir(c)
      'runs/lstm_ft_full'
    """
    if config.get("init_from"):
        return f"runs/{config.name}_ft_{config.finetune.strategy}"
    return f"runs/{config.name}"


def prepare(workdir: Path, config: ml_collections.ConfigDict, tokenizer: Any) -> None:
    """Creates the run folder and writes ``config.json`` and ``tokenizer.json`` (process 0)."""
    if monitor.is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / CONFIG_FILE).write_text(config.to_json(indent=1))
        save_tokenizer(tokenizer, workdir / TOKENIZER_FILE)


# The per-word and per-byte figures a final report holds when the evaluation gave them.
PER_TEXT = tuple(
    f"{key}_per_{unit}" for unit in ("word", "byte") for key in ("loss", "bits", "perplexity")
)


def final_report(
    step: int, validation: dict[str, float], test: dict[str, float], **extra: Any
) -> dict[str, Any]:
    """The final metrics of a run, as ``status.json`` keeps them and ``train_and_evaluate``
    returns them: validation and test loss, bits and perplexity per token; per word and per
    byte of the split's text where the evaluation gave them (``validation_bits_per_byte``,
    ``test_perplexity_per_word``, ...); and ``extra``.

    Example:
      >>> r = {"loss": 1.0, "bits": 1.44, "perplexity": 2.72, "tokens": 99.0}
      >>> sorted(final_report(10, r, r, sample="The"))[:4]
      ['sample', 'step', 'test_bits', 'test_loss']
      >>> r.update(loss_per_byte=0.5, bits_per_byte=0.72, perplexity_per_byte=1.65)
      >>> final_report(10, r, r)["validation_bits_per_byte"]
      0.72
    """
    final: dict[str, Any] = {"step": step}
    for split, result in (("validation", validation), ("test", test)):
        for key in ("loss", "bits", "perplexity", *PER_TEXT):
            if key in result or key in ("loss", "bits", "perplexity"):
                final[f"{split}_{key}"] = result[key]
    final.update(extra)
    return final


def print_final(final: dict[str, Any], unit: str) -> None:
    """The final validation and test figures (process 0): one line per token, and one per word
    and per byte where the report has them."""
    v = {k: final[f"validation_{k}"] for k in ("loss", "bits", "perplexity")}
    t = {k: final[f"test_{k}"] for k in ("loss", "bits", "perplexity")}
    log(
        f"Final validation loss {v['loss']:.4f} nats/{unit} ({v['bits']:.4f} bits/{unit}, "
        f"perplexity {v['perplexity']:.2f}); test loss {t['loss']:.4f} nats/{unit} "
        f"({t['bits']:.4f} bits/{unit}, perplexity {t['perplexity']:.2f})"
    )
    parts = []
    for split in ("validation", "test"):
        if f"{split}_perplexity_per_word" in final:
            parts.append(
                f"{split} perplexity {final[f'{split}_perplexity_per_word']:.2f} per word, "
                f"{final[f'{split}_bits_per_byte']:.4f} bits per byte"
            )
    if parts:
        log("  " + "; ".join(parts))


def finished(workdir: Path) -> dict[str, Any] | None:
    """The final metrics of a finished run in ``workdir``, or None when it has not finished
    (or its ``status.json`` cannot be read: the run's own files then decide)."""
    status = monitor.read_status(workdir, log=lambda _: None) or {}
    final = status.get("final")
    return final if status.get("state") == "finished" and isinstance(final, dict) else None


def print_finished(workdir: Path, final: dict[str, Any]) -> dict[str, Any]:
    """Says the run in ``workdir`` already finished, with its final metrics; returns them."""
    step = f" at step {final['step']}" if "step" in final else ""
    log(f"Run in {workdir} already finished{step}; nothing to do.")
    for key, value in final.items():
        log(f"  {key}: {value}")
    return final


SAMPLE_FILE = "sample.txt"
REPORT_FILE = "report.html"


def save_sample(workdir: Path, sample: str) -> None:
    """Writes the generated sample to ``sample.txt`` (process 0; none when it is empty).

    A write that fails is said and ignored: the sample is in ``status.json``'s final metrics
    too, and the run has finished.
    """
    if not monitor.is_writer() or not sample:
        return
    try:
        (workdir / SAMPLE_FILE).write_text(sample)
    except OSError as e:
        log(f"Could not write {workdir / SAMPLE_FILE}: {e}")


def report_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the run writes ``report.html``: ``config.monitor.report`` (on where a config
    predates the switch).

    Example:
      >>> from jaxlm.config import load_config
      >>> report_enabled(load_config("lstm")), report_enabled(load_config("lstm:smoke"))
      (True, False)
    """
    return bool(config.get("monitor", {}).get("report", True))


def write_report(workdir: Path, config: ml_collections.ConfigDict) -> Path | None:
    """Writes the run's ``report.html`` at its end (process 0), when the config asks for it.

    Never fails the run: an error is one line, and the run's files stand as they are.

    Returns:
      The page, or None when none was written.
    """
    if not monitor.is_writer() or not report_enabled(config):
        return None
    t0 = time.perf_counter()
    try:
        from jaxlm.runs.report import write_report as write

        path = write(workdir, warn=lambda _: None)  # damaged files: the run said so itself
    except Exception as e:  # a report is a convenience: never a failed run
        log(f"Could not write {workdir / REPORT_FILE}: {type(e).__name__}: {e}")
        return None
    log(f"Report: {path} ({time.perf_counter() - t0:.1f}s)")
    return path


def sole_writer(workdir: Path) -> contextlib.AbstractContextManager:
    """The workdir's lock on process 0 (the one that writes); the others share its run."""
    if not monitor.is_writer():
        return contextlib.nullcontext()
    return exclusive(workdir, log=log)


def report_previous(workdir: Path) -> str | None:
    """Says so when the last run here died without a word (its status still says running);
    returns that line (the run records it as a ``crash`` event), else None."""
    status = monitor.read_status(workdir, log=log)
    if status is not None and status["state"] in monitor.ACTIVE_STATES:
        line = (
            f"The previous run in {workdir} (pid {status.get('pid')} on host "
            f"{status.get('host')}) ended without a word at step {status.get('step')} (killed?): "
            "going on from its checkpoints"
        )
        log(line)
        return line
    return None


def check_init_from(config: ml_collections.ConfigDict) -> None:
    """Refuses a ``config.init_from`` that holds no checkpoint (ConfigError naming the field)."""
    if not config.get("init_from"):
        return
    try:
        resolve(config.init_from)
    except CheckpointError as e:
        raise ConfigError(f"config.init_from: {e}") from None
