"""``python -m jaxlm.explain --workdir=DIR --text=TEXT``: why a saved model predicted what it did.

Prints, for the text, each token's probability, rank, surprisal and the prediction's entropy
and top-k, and the attribution of the prediction after the text (its top token, ``--target``,
or ``--target`` rather than ``--contrast``) to every token before it. ``--json=FILE`` writes
the schema of docs/explain.md, ``--html=FILE`` a self-contained page (a heatmap over the text;
click a token for its prediction and its attributions; a method switch); both explain every
position. Works for recurrent, Transformer and n-gram runs; ``--ngram=DIR`` shows an n-gram
run's probability of each token beside a neural model's.

Examples:
  python -m jaxlm.explain --workdir=runs/lstm --text="The result of the" --html=why.html
  python -m jaxlm.explain --workdir=runs/lstm_ptb --text="the company said" \
      --target=" it" --contrast=" they" --method=ig
  python -m jaxlm.explain --workdir=runs/ngram_ptb --text="the company said"

Bad input (an empty text, a target that is not one token, a workdir without a checkpoint) is one
line on stderr and exit status 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jaxlm.errors import JaxlmError


class ExplainError(JaxlmError, ValueError):
    """Input the explainer cannot use: the message names the flag and what was expected."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxlm.explain",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="the run folder (neural or n-gram)")
    p.add_argument("--step", type=int, help="which checkpoint of the run (default the latest)")
    p.add_argument("--text", required=True, help="the text whose predictions are explained")
    p.add_argument("--target", help="explain this next token (one token of the tokenizer)")
    p.add_argument("--contrast", help="explain --target rather than this token")
    p.add_argument(
        "--method",
        default=None,
        help="ig, gxi, saliency, occlusion, a comma list, or all (default: ig for neural "
        "models, occlusion for n-grams; the page and --json get all unless given)",
    )
    p.add_argument("--score", default="logprob", choices=["logprob", "logit"])
    p.add_argument("--steps", type=int, default=64, help="integrated-gradient steps")
    p.add_argument(
        "--baseline", default=None, help="IG/occlusion baseline token (default: zero embedding)"
    )
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--window", type=int, help="recurrent models: attribute the last N tokens")
    p.add_argument("--all", action="store_true", help="explain every position in the terminal")
    p.add_argument("--words", action="store_true", help="also print word-level attributions")
    p.add_argument("--ngram", help="an n-gram run whose probabilities are shown beside")
    p.add_argument(
        "--counts", action="store_true", help="n-gram: read the training split for raw counts"
    )
    p.add_argument("--json", help="write the explanation as JSON to this file (- for stdout)")
    p.add_argument("--html", help="write the page to this file")
    p.add_argument("--plain", action="store_true", help="no colours (the default when piped)")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    return p


def one_token(tokenizer: Any, text: str, flag: str) -> int:
    """The id of a text that must be exactly one token of the tokenizer.

    Args:
      tokenizer: the run's tokenizer.
      text: e.g. ``" value"``.
      flag: the flag's name, for the message.

    Returns:
      The token id.

    Raises:
      ExplainError: it is several tokens (the message shows how it tokenises), none, or an
        unknown token.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> one_token(CharTokenizer.train("abc"), "b", "--target")
      2
    """
    ids = tokenizer.encode(text).tolist()
    pieces = [tokenizer.vocab[i] for i in ids]
    if len(ids) != 1:
        raise ExplainError(
            f"{flag}: {text!r} is {len(ids)} tokens of the run's {tokenizer.kind} tokenizer "
            f"({pieces}); give exactly one token"
        )
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and ids[0] == unk and text.strip() != tokenizer.vocab[unk]:
        raise ExplainError(
            f"{flag}: {text!r} is not in the run's {tokenizer.kind} vocabulary (it reads as "
            f"{tokenizer.vocab[unk]!r})"
        )
    return int(ids[0])


def _methods(spec: str | None, ngram: bool, everything: bool) -> tuple[str, ...]:
    from jaxlm.explain.core import METHODS

    if spec is None:
        if ngram:
            return ("occlusion",)
        return METHODS if everything else ("ig",)
    if spec == "all":
        return ("occlusion",) if ngram else METHODS
    out = tuple(m.strip() for m in spec.split(",") if m.strip())
    for m in out:
        if m not in METHODS:
            raise ExplainError(f"--method: unknown {m!r}; expected {', '.join(METHODS)} or all")
        if ngram and m != "occlusion":
            raise ExplainError(
                f"--method: {m} needs gradients; an n-gram model has none (use "
                "--method=occlusion; its back-off paths come with every explanation)"
            )
    return out


def _counts(run: Any) -> Any:
    """The training counts of an n-gram run (reads and tokenizes its training split)."""
    from jaxlm import data
    from jaxlm.models.ngram import count_ngrams

    corpus = data.load_corpus(run.config.data)
    model = run.model
    return count_ngrams(
        corpus.train, model.vocab_size, model.order, eos_id=model.eos_id, add_bos=model.add_bos
    )


def explain_run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the explanation the flags ask for; returns the JSON dict (:func:`to_json`)."""
    import warnings

    import numpy as np

    from jaxlm.checkpoints import load_run
    from jaxlm.explain.core import Target, attribute
    from jaxlm.explain.render import to_json
    from jaxlm.models.ngram import NGramModel

    if not args.text:
        raise ExplainError("--text: the text is empty; give the text to explain")
    run = load_run(args.workdir, step=args.step)
    tok = run.tokenizer
    if tok is None:
        raise ExplainError(f"--workdir: {args.workdir} has no readable tokenizer")
    ids = np.asarray(tok.encode(args.text))
    if ids.size == 0:
        raise ExplainError(f"--text: {args.text!r} has no tokens for the {tok.kind} tokenizer")
    is_ngram = isinstance(run.model, NGramModel)
    everything = bool(args.html or args.json or args.all)
    methods = _methods(args.method, is_ngram, everything)
    target = one_token(tok, args.target, "--target") if args.target is not None else None
    contrast = one_token(tok, args.contrast, "--contrast") if args.contrast is not None else None
    baseline = one_token(tok, args.baseline, "--baseline") if args.baseline is not None else None
    if contrast is not None and target is None:
        raise ExplainError("--contrast: needs --target (explain the target rather than it)")
    last = Target(-1, target, contrast)
    targets = ["all", last] if everything else [last]
    options = dict(score=args.score, steps=args.steps, baseline=baseline, top_k=args.top_k)
    if args.window is not None:
        options["window"] = args.window
    if is_ngram and args.counts:
        options["counts"] = _counts(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the explanation carries its warnings
        e = attribute(run.model, run.params, ids, targets, method=methods, **options)
    ngram, order = None, None
    if args.ngram:
        ngram, order = _beside(args.ngram, tok, ids, e.start)
    data = to_json(
        e,
        tok,
        text=args.text,
        model_name=run.config.model.get("name"),
        ngram=ngram,
        ngram_order=order,
    )
    if args.words:
        data["words"] = _words(e, tok)
    return data


def _beside(workdir: str, tok: Any, ids: Any, start: int) -> tuple[list, int]:
    """The n-gram paths of the same tokens from another run with the same vocabulary."""
    from jaxlm.checkpoints import load_run
    from jaxlm.explain.ngram import explain_ngram
    from jaxlm.models.ngram import NGramModel

    other = load_run(workdir)
    if not isinstance(other.model, NGramModel):
        raise ExplainError(f"--ngram: {workdir} is not an n-gram run")
    if other.tokenizer is None or list(other.tokenizer.vocab) != list(tok.vocab):
        raise ExplainError(
            f"--ngram: {workdir} has another vocabulary than --workdir's; the n-gram model must "
            "use the same tokenizer to score the same tokens"
        )
    return explain_ngram(other.model, ids)[start:], other.model.order


def _words(e: Any, tok: Any) -> list[dict[str, Any]]:
    out = []
    for k, t in enumerate(e.targets):
        for method, values in t.attributions.items():
            words, scores = e.word_scores(tok, values)
            out.append(
                {"target": k, "method": method, "words": list(words), "scores": scores.tolist()}
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    try:
        data = explain_run(args)
    except (JaxlmError, ValueError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    from jaxlm.explain.render import dumps, to_html, to_terminal

    for w in data["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        text = dumps(data)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    if args.html:
        Path(args.html).write_text(to_html(data), encoding="utf-8")
    if args.json != "-":
        plain = args.plain or not sys.stdout.isatty()
        shown = range(len(data["targets"]))
        if not args.all and (args.html or args.json):  # the terminal shows the last target
            shown = shown[-1:]
        words = {}
        for w in data.get("words", []):  # the first method's words of each shown target
            if w["target"] in shown and shown.index(w["target"]) not in words:
                words[shown.index(w["target"])] = (w["words"], w["scores"])
        data = {**data, "targets": [data["targets"][k] for k in shown]}
        sys.stdout.write(to_terminal(data, plain=plain, words=words))
        for what, path in (("JSON", args.json), ("page", args.html)):
            if path:
                print(f"wrote the {what} to {path}")
    return 0


def run() -> None:
    """The console script ``jaxlm-explain``."""
    sys.exit(main())


if __name__ == "__main__":
    run()
