"""Command line: ``python -m jaxlm.evaluate --workdir=DIR [--checkpoint=STEP_OR_DIR]
[--split=validation|test]`` (also ``jaxlm-evaluate``).

Evaluates a saved run on a whole split of its corpus and prints the loss in nats, bits and
perplexity per token (the unit is the tokenizer's: char, byte, word, or a subword token), then
per word and per byte of the split's text, which compare across tokenizers. The config and tokenizer
come from the run itself, so any checkpoint jaxlm writes (a run's, an averaged, imported or
converted one) and any n-gram run can be evaluated. The library function is
:func:`jaxlm.train.evaluate.evaluate_run`; this module defines no flags when imported.
"""

from __future__ import annotations

import math
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The flags of this command line; defined here, when it runs, never by an import."""
    if "split" in FLAGS:
        return
    if "workdir" not in FLAGS:
        flags.DEFINE_string("workdir", None, "Run folder whose checkpoint is evaluated.")
    flags.DEFINE_string(
        "checkpoint",
        None,
        "A step of --workdir (e.g. 2000), or a checkpoint folder (<workdir>/checkpoints/<step>) "
        "or run folder; default: the latest checkpoint of --workdir.",
    )
    flags.DEFINE_enum("split", "validation", ["validation", "test"], "Which split.")
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the traceback of an expected error too.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from jaxlm.errors import JaxlmError
    from jaxlm.train.evaluate import evaluate_run

    spec = FLAGS.checkpoint
    path, step = FLAGS.workdir, None
    if spec and spec.isdigit():
        step = int(spec)
    elif spec:
        path = spec
    if path is None:
        raise app.UsageError("--workdir (or --checkpoint=DIR) is required")
    try:
        r = evaluate_run(path, step=step, split=FLAGS.split)
    except JaxlmError as e:
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    unit = r["unit"]
    at = f" (step {r['step']})" if r["step"] is not None else ""
    print(
        f"{r['checkpoint']}{at}, {r['split']} split, {int(r['tokens']):,} tokens: "
        f"loss {r['loss']:.4f} nats/{unit}, {r['bits']:.4f} bits/{unit}, "
        f"perplexity {r['perplexity']:.2f}",
        flush=True,
    )
    if "perplexity_per_word" in r:
        print(
            f"  per word ({int(r['words']):,} words): loss {r['loss_per_word']:.4f} nats, "
            f"perplexity {r['perplexity_per_word']:.2f}; per byte ({int(r['bytes']):,} bytes): "
            f"loss {r['loss_per_byte']:.4f} nats, {r['bits_per_byte']:.4f} bits, "
            f"perplexity {r['perplexity_per_byte']:.4f}",
            flush=True,
        )
    if not math.isfinite(r["loss"]):
        sys.exit(1)


def run() -> None:
    """The console script ``jaxlm-evaluate``."""
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
