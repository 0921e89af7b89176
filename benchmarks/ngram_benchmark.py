"""Speed and memory of jaxlm's n-gram models on the Penn Treebank, next to NLTK's.

Three measurements, each in its own fresh process (so peak memory is its own), in one run:

1. ``ours-full``: the 5-gram interpolated modified Kneser-Ney model built on the whole PTB
   training split (929,589 tokens with ``<eos>``) and scored on the whole test split (82,430);
   reports wall time of build and scoring, peak RSS, and validation/test perplexity.
2. ``nltk-slice``: ``nltk.lm.KneserNeyInterpolated`` (NLTK's own padding pipeline) fitted on the
   first ``--slice-lines`` training sentences and scoring the first ``--test-lines`` test
   sentences. NLTK cannot do the whole corpus in reasonable time: its ``score`` walks every
   higher-order n-gram type per call, so its cost per test token grows with the training size.
3. ``ours-slice``: our model on exactly the same slice and test sentences, for the per-token
   comparison.

Usage (from the repository root)::

    python benchmarks/ngram_benchmark.py                 # ../shared/data/ptb
    python benchmarks/ngram_benchmark.py --slice-lines 500 --test-lines 3

Peak memory is the process's peak resident set (``ru_maxrss``); "+MB" is the part above the
resident set just before building (after imports and reading the data).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PTB = ROOT / ".." / "shared" / "data" / "ptb"


def _rss_mb() -> float:
    """Current resident set size of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """Peak resident set size of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lines(path: Path, n: int | None) -> str:
    text = path.read_text()
    if n is None:
        return text
    return "".join(text.splitlines(keepends=True)[:n])


def run_ours(ptb: Path, order: int, slice_lines: int | None, test_lines: int | None) -> dict:
    """Builds and scores our model; the whole corpus when the line limits are None."""
    import numpy as np

    from jaxlm.data.tokenizers import WordTokenizer
    from jaxlm.models import ngram

    train_text = _lines(ptb / "ptb.train.txt", slice_lines)
    test_text = _lines(ptb / "ptb.test.txt", test_lines)
    t0 = time.perf_counter()
    tok = WordTokenizer.train(train_text)
    train, test = tok.encode(train_text), tok.encode(test_text)
    valid = tok.encode((ptb / "ptb.valid.txt").read_text()) if slice_lines is None else None
    t_tok = time.perf_counter() - t0
    base = _rss_mb()
    t0 = time.perf_counter()
    model = ngram.build(train, tok.vocab_size, order, eos_id=tok.eos_id)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    total, count = model.nll(test)
    t_score = time.perf_counter() - t0
    out = {
        "train_tokens": int(len(train)),
        "test_tokens": int(count),
        "tokenize_s": t_tok,
        "build_s": t_build,
        "score_s": t_score,
        "test_ppl": float(np.exp(total / count)),
        "num_ngrams": model.num_ngrams,
        "base_mb": base,
        "peak_mb": _peak_mb(),
    }
    if valid is not None:
        out["valid_ppl"] = model.perplexity(valid)
    return out


def run_nltk(ptb: Path, order: int, slice_lines: int, test_lines: int) -> dict:
    """Fits and scores NLTK's KneserNeyInterpolated on a slice, with NLTK's own padding."""
    import math

    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    sents = [ln.split() for ln in _lines(ptb / "ptb.train.txt", slice_lines).splitlines()]
    tests = [ln.split() for ln in _lines(ptb / "ptb.test.txt", test_lines).splitlines()]
    base = _rss_mb()
    t0 = time.perf_counter()
    train, vocab = padded_everygram_pipeline(order, sents)
    lm = KneserNeyInterpolated(order)
    lm.fit(train, vocab)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    total, count, zero = 0.0, 0, 0
    pad = ["<s>"] * (order - 1)
    for s in tests:
        words = pad + s + ["</s>"]
        for i in range(order - 1, len(words)):
            p = lm.score(words[i], words[i - order + 1 : i])
            count += 1
            if p > 0:
                total -= math.log(p)
            else:
                zero += 1
    t_score = time.perf_counter() - t0
    return {
        "train_tokens": sum(len(s) + 1 for s in sents),
        "test_tokens": count,
        "build_s": t_build,
        "score_s": t_score,
        "test_ppl": math.exp(total / count) if zero == 0 else float("inf"),
        "zero_prob_tokens": zero,
        "base_mb": base,
        "peak_mb": _peak_mb(),
    }


def _worker(args: argparse.Namespace) -> None:
    ptb = Path(args.ptb)
    if args.worker == "ours-full":
        out = run_ours(ptb, args.order, None, None)
    elif args.worker == "ours-slice":
        out = run_ours(ptb, args.order, args.slice_lines, args.test_lines)
    else:
        out = run_nltk(ptb, args.order, args.slice_lines, args.test_lines)
    print(json.dumps(out))


def _spawn(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--ptb", str(args.ptb)]
    cmd += ["--order", str(args.order), "--slice-lines", str(args.slice_lines)]
    cmd += ["--test-lines", str(args.test_lines)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if res.returncode:
        sys.exit(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs the three measurements and prints them side by side."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ptb", default=str(DEFAULT_PTB), help="folder with ptb.{train,valid,test}.txt")
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--slice-lines", type=int, default=2000, help="training sentences for NLTK")
    p.add_argument("--test-lines", type=int, default=10, help="test sentences for NLTK")
    p.add_argument("--worker", choices=["ours-full", "ours-slice", "nltk-slice"], help="internal")
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    if not (Path(args.ptb) / "ptb.train.txt").exists():
        sys.exit(f"no PTB at {args.ptb} (ptb.train.txt missing)")

    full = _spawn("ours-full", args)
    print(f"PTB {args.order}-gram interpolated modified Kneser-Ney, jaxlm, whole corpus")
    print(
        f"  train {full['train_tokens']:,} tokens -> build {full['build_s']:.2f} s; "
        f"test {full['test_tokens']:,} tokens -> score {full['score_s']:.2f} s; "
        f"build+score {full['build_s'] + full['score_s']:.2f} s "
        f"(+ {full['tokenize_s']:.2f} s reading/tokenizing)"
    )
    print(
        f"  peak RSS {full['peak_mb']:.0f} MB (+{full['peak_mb'] - full['base_mb']:.0f} MB "
        f"over {full['base_mb']:.0f} MB before building); n-grams per order {full['num_ngrams']}"
    )
    print(f"  valid ppl {full['valid_ppl']:.2f}, test ppl {full['test_ppl']:.2f} (published 141.2)")

    try:
        import nltk  # noqa: F401
    except ImportError:
        print("nltk is not installed (pip install jaxlm[ngram]); skipping the comparison")
        return
    nl = _spawn("nltk-slice", args)
    ours = _spawn("ours-slice", args)
    print(
        f"\nSame slice for both: first {args.slice_lines} training sentences "
        f"({ours['train_tokens']:,} tokens), first {args.test_lines} test sentences "
        f"({ours['test_tokens']} tokens)"
    )
    header = f"  {'':30s}{'build s':>9s}{'us/train tok':>14s}{'score s':>9s}"
    print(header + f"{'us/test tok':>13s}{'peak MB':>9s}{'+MB':>7s}{'test ppl':>10s}")
    for name, r in (("jaxlm modified KN", ours), ("nltk KneserNeyInterpolated", nl)):
        print(
            f"  {name:30s}{r['build_s']:9.3f}{1e6 * r['build_s'] / r['train_tokens']:14.2f}"
            f"{r['score_s']:9.3f}{1e6 * r['score_s'] / r['test_tokens']:13.1f}"
            f"{r['peak_mb']:9.0f}{r['peak_mb'] - r['base_mb']:7.0f}{r['test_ppl']:10.1f}"
        )
    build_x = (nl["build_s"] / nl["train_tokens"]) / (ours["build_s"] / ours["train_tokens"])
    score_x = (nl["score_s"] / nl["test_tokens"]) / (ours["score_s"] / ours["test_tokens"])
    print(
        f"  per token, jaxlm is {build_x:.0f}x faster to build and {score_x:.0f}x faster to score"
    )
    if nl["zero_prob_tokens"]:
        print(
            f"  (NLTK gives probability 0 to {nl['zero_prob_tokens']} test tokens outside its "
            "slice's vocabulary, so its perplexity is infinite; ours maps them to <unk>)"
        )
    full_est = nl["score_s"] / nl["test_tokens"] * full["test_tokens"]
    print(
        f"  NLTK would need about {full_est / 3600:.1f} h to score the whole test set even with "
        "this small training slice (its cost per token grows with the training size)"
    )


if __name__ == "__main__":
    main()
