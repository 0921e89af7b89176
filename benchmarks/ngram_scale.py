"""N-gram models at scale: text to ARPA on corpora of growing size, ours within a memory budget
next to KenLM's ``lmplz`` with the same budget.

For each size (tokens, ``<eos>`` included) the whole pipeline runs in a fresh child process,
timed from the text file to the ARPA file, and its peak resident set is read from the kernel's
accounting of that child (GNU ``time -f %M`` around it; peak RSS shows NaN without
``/usr/bin/time``):

- **ours**: read the text in blocks, the vocabulary (:class:`jaxlm.data.tokenizers.
  WordTokenizer`'s) and the ids in one pass (:meth:`~jaxlm.data.tokenizers.WordTokenizer.
  train_and_encode`), the ids written to a flat file and memory-mapped;
  :func:`jaxlm.models.ngram.build` with ``memory_limit`` (counting in chunks spilled to
  disk, :mod:`jaxlm.models.ngram.chunked`); :func:`jaxlm.models.ngram.arpa.write_arpa`.
- **lmplz** (skipped, with a message, when not found): ``lmplz -o N -S <budget>b -T <tmp>
  --discount_fallback < text > arpa``, the same budget in bytes.

The corpora: one synthetic stream sampled (exact back-off sampling at temperature 1,
:meth:`jaxlm.models.ngram.NGramModel.sample`) from a 5-gram trained on the built-in corpus and
the PTB training split joined, so n-gram types grow with the size as in real text; each size is
a prefix of that stream (whole sentences), cached under ``--cache`` with its text file, so
reruns only run the builds. It prints a table (seconds, peak RSS, n-grams, the time ratio), then
the exponent ``b`` of ``time ~ tokens^b`` fitted by least squares on log-log for each tool.

Usage (from the repository root)::

    python benchmarks/ngram_scale.py                               # 0.25M .. 64M, 4GB
    python benchmarks/ngram_scale.py --sizes 0.25M,1M,4M --repeats 3
    python benchmarks/ngram_scale.py --sizes 64M --lmplz /work/kenlm/build/bin/lmplz

The machine the numbers come from was shared with other jobs: report medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_PTB = ROOT / ".." / "shared" / "data" / "ptb"
DEFAULT_SIZES = "0.25M,1M,4M,16M,64M"
LMPLZ_PLACES = (Path("/work/kenlm/build/bin/lmplz"),)
BLOCK_LINES = 200_000  # lines per block when tokenizing
STREAM_LEN = 512  # tokens per sampled text
UNK_WORD = b"UNK"  # how the corpus files write the generator's <unk>


def parse_count(text: str) -> int:
    """``"0.25M"`` -> 250000, ``"4k"`` -> 4000, ``"1000"`` -> 1000."""
    text = text.strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    return int(round(float(number) * scale))


def label(n: int) -> str:
    return f"{n / 1e6:g}M"


# -- the synthetic corpus -------------------------------------------------------------------------


def generator_model(ptb: Path):
    """The 5-gram the corpus is sampled from, and its tokenizer: built-in corpus + PTB train."""
    from jaxlm.data.builders import builtin_text
    from jaxlm.data.tokenizers import WordTokenizer
    from jaxlm.models import ngram

    text = (ptb / "ptb.train.txt").read_text() + builtin_text().decode("utf-8")
    tok = WordTokenizer.train(text)
    ids = tok.encode(text)
    return ngram.build(ids, tok.vocab_size, 5, eos_id=tok.eos_id), tok


def ensure_stream(cache: Path, tokens: int, ptb: Path, streams: int, seed: int) -> Path:
    """``cache/stream.i32``: at least ``tokens`` sampled ids, grown in rounds of up to
    ``streams`` texts of ``STREAM_LEN`` tokens each, sampled in lockstep, each starting a
    sentence, its last token set to ``<eos>``; a prefix is whole texts."""
    import numpy as np

    cache.mkdir(parents=True, exist_ok=True)
    path, vocab_path = cache / "stream.i32", cache / "vocab.json"
    have = path.stat().st_size // 4 if path.exists() else 0
    if have >= tokens:
        return path
    t0 = time.perf_counter()
    model, tok = generator_model(ptb)
    if vocab_path.exists() and json.loads(vocab_path.read_text()) != tok.vocab:
        raise SystemExit(f"{vocab_path}: a different generator's vocabulary; clear {cache}")
    vocab_path.write_text(json.dumps(tok.vocab))
    print(f"sampling {tokens - have:,} tokens from the generator 5-gram ...", flush=True)
    rnd = have // STREAM_LEN
    while have < tokens:
        b = min(streams, -(-(tokens - have) // STREAM_LEN))
        out = model.sample(np.zeros((b, 0), np.int64), STREAM_LEN, rng=seed + rnd)
        out[:, -1] = tok.eos_id
        with open(path, "ab") as f:
            out.astype(np.int32).reshape(-1).tofile(f)
        have += out.size
        rnd += b
        print(f"  {have:,} tokens ({time.perf_counter() - t0:.0f} s)", flush=True)
    return path


def ensure_text(cache: Path, size: int) -> tuple[Path, int]:
    """``cache/corpus_<size>.txt``: the stream's first ``size`` tokens cut at the last
    ``<eos>``, one sentence a line; returns it and its token count (``<eos>`` included)."""
    import numpy as np

    vocab = json.loads((cache / "vocab.json").read_text())
    ids = np.memmap(cache / "stream.i32", np.int32, mode="r")[:size]
    ends = np.flatnonzero(ids == 0)
    count = int(ends[-1]) + 1 if len(ends) else 0
    path = cache / f"corpus_{label(size)}.txt"
    if path.exists() and path.with_suffix(".count").exists():
        return path, int(path.with_suffix(".count").read_text())
    words = np.array([w.encode() + b" " for w in vocab], dtype=object)
    words[0] = b"\n"
    words[1] = UNK_WORD + b" "  # lmplz refuses <unk> in a corpus: a plain word for both tools
    if UNK_WORD.decode() in vocab:
        raise SystemExit(f"the generator's vocabulary has {UNK_WORD!r} already")
    with open(path, "wb") as f:
        for s in range(0, count, 1 << 22):
            block = ids[s : min(s + (1 << 22), count)]
            text = b"".join(words[block].tolist()).replace(b" \n", b"\n")
            f.write(text)
    path.with_suffix(".count").write_text(str(count))
    return path, count


# -- the child processes -----------------------------------------------------------------


def child_ours(text: Path, arpa_path: Path, order: int, memory_limit: str, tmp: Path) -> dict:
    """Text to ARPA with our tools; returns the phases' seconds and the model's sizes."""
    import numpy as np

    from jaxlm.data.tokenizers import WordTokenizer
    from jaxlm.models import ngram
    from jaxlm.models.ngram import arpa

    def blocks():
        with open(text, encoding="utf-8") as f:
            while True:
                lines = f.readlines(BLOCK_LINES * 40)
                if not lines:
                    return
                yield "".join(lines)

    t0 = time.perf_counter()
    tok, ids_in_memory = WordTokenizer.train_and_encode(blocks())
    ids_path = tmp / "ids.i32"
    ids_in_memory.tofile(ids_path)
    del ids_in_memory
    ids = np.memmap(ids_path, np.int32, mode="r")
    t1 = time.perf_counter()
    model = ngram.build(
        ids,
        tok.vocab_size,
        order,
        eos_id=tok.eos_id,
        vocab=tok.vocab,
        memory_limit=memory_limit,
        tmp_dir=tmp,
    )
    t2 = time.perf_counter()
    build_peak = _hwm_mb()
    arpa.write_arpa(model, arpa_path, precision="float32")  # as lmplz writes
    t3 = time.perf_counter()
    return {
        "tokenize_s": t1 - t0,
        "build_s": t2 - t1,
        "arpa_s": t3 - t2,
        "tokens": int(len(ids)),
        "num_ngrams": model.num_ngrams,
        "chunks": model.info["memory"]["chunks"],
        "build_peak_mb": build_peak,
    }


def _hwm_mb() -> float:
    """This process's peak resident set in MB since its ``exec`` (``VmHWM``; ``ru_maxrss``
    would include the parent's resident set at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


GNU_TIME = Path("/usr/bin/time")


def run_child(cmd: list[str], stdin=None, stdout=None) -> tuple[float, float, str]:
    """Runs a command; ``(wall seconds, peak RSS in MB, stdout text)`` of that process alone.

    The peak comes from GNU ``time -f %M`` around the command, a small process to fork from:
    a child's ``ru_maxrss`` starts at its parent's resident set when it forks, and this
    benchmark's own process holds the sampled corpus.
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        wrapped = [str(GNU_TIME), "-f", "%M", "-o", str(peak_file), *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(
            wrapped if GNU_TIME.exists() else cmd,
            stdin=stdin,
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]!r}")
        if GNU_TIME.exists():
            peak = int(peak_file.read_text().split()[-1]) / 1024
        else:
            peak = float("nan")
    out = proc.stdout.decode() if stdout is None else ""
    return wall, peak, out


def ours(text: Path, order: int, memory_limit: str, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(text), "--order",
           str(order), "--memory_limit", memory_limit, "--work", str(work)]  # fmt: skip
    wall, peak, out = run_child(cmd)
    res = json.loads(out.strip().splitlines()[-1])
    res.update(seconds=wall, peak_mb=peak)
    return res


def lmplz(binary: Path, text: Path, order: int, budget: int, work: Path) -> dict:
    cmd = [str(binary), "-o", str(order), "-S", f"{budget}b", "-T", str(work),
           "--discount_fallback"]  # fmt: skip
    with open(text, "rb") as src, open(work / "lmplz.arpa", "wb") as dst:
        wall, peak, _ = run_child(cmd, stdin=src, stdout=dst)
    return {"seconds": wall, "peak_mb": peak, "num_ngrams": arpa_counts(work / "lmplz.arpa")}


def arpa_counts(path: Path) -> list[int]:
    """The ``ngram n=count`` lines of an ARPA header."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                out.append(int(line.split("=")[1]))
            elif line.startswith("\\1-grams"):
                break
    return out


def warm_memory(warm_mb: float, peaks: list[float]) -> None:
    """Touches and frees memory before a timed child, so that neither tool pays for pages the
    host has taken back.

    On the VM these numbers come from, the first touch of memory that has been free for a
    couple of seconds costs about 8 s per GB (the balloon driver hands free pages back to the
    host; touching them again faults them in from the host), against about 0.3 s per GB for
    pages freed just before. Without this, a tool that runs right after the other inherits its
    freshly freed pages and the one that runs first pays for its whole peak: the order of the
    runs, not the tools, decides seconds. The page cache that the ARPA file fills comes from
    the same free pages. ``warm_mb`` < 0 (default): twice the largest peak RSS seen so far (for
    the resident set and the ARPA file's pages), at least 1 GB; 0: off.
    """
    import numpy as np

    if warm_mb == 0:
        return
    mb = warm_mb if warm_mb > 0 else max(1024.0, 2 * max(peaks, default=0.0))
    block = np.ones(int(mb * 2**20) // 8)
    del block


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """``b`` of ``seconds ~ sizes^b``, least squares on log-log."""
    import numpy as np

    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def find_lmplz(given: str) -> Path | None:
    if given:
        return Path(given)
    found = shutil.which("lmplz")
    if found:
        return Path(found)
    return next((p for p in LMPLZ_PLACES if p.exists()), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated token counts")
    p.add_argument("--memory_limit", default="4GB", help="budget for ours and lmplz's -S")
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--cache", default=str(ROOT / "runs" / "ngram_scale"), help="corpora cache")
    p.add_argument("--lmplz", default="", help="lmplz binary (default: PATH, /work/kenlm)")
    p.add_argument("--ptb", default=str(DEFAULT_PTB))
    p.add_argument("--repeats", type=int, default=1, help="runs per tool and size (median)")
    p.add_argument("--streams", type=int, default=131072, help="streams sampled in lockstep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--warm_mb",
        type=float,
        default=-1,
        help="MB of memory touched before each timed child (-1: twice the largest peak so far; "
        "0: off); see warm_memory",
    )
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        work = Path(args.work)
        res = child_ours(Path(args.child), work / "ours.arpa", args.order, args.memory_limit, work)
        print(json.dumps(res))
        return

    from jaxlm.models.ngram.chunked import parse_memory_limit

    budget = parse_memory_limit(args.memory_limit)
    sizes = sorted(parse_count(s) for s in args.sizes.split(","))
    cache, ptb = Path(args.cache), Path(args.ptb)
    if not (ptb / "ptb.train.txt").exists():
        raise SystemExit(f"--ptb {ptb}: no ptb.train.txt (the generator trains on it)")
    binary = find_lmplz(args.lmplz)
    if binary is None:
        print("lmplz not found (--lmplz, PATH or /work/kenlm/build/bin): its columns are skipped")
    ensure_stream(cache, sizes[-1], ptb, args.streams, args.seed)
    rows, peaks = [], []
    for size in sizes:
        text, count = ensure_text(cache, size)
        mine, theirs = [], []
        for rep in range(args.repeats):
            tools = ["ours", "lmplz"] if binary is not None else ["ours"]
            for tool in tools if rep % 2 == 0 else tools[::-1]:  # each goes first in turn
                warm_memory(args.warm_mb, peaks)
                with tempfile.TemporaryDirectory(dir=cache) as work:
                    if tool == "ours":
                        mine.append(ours(text, args.order, args.memory_limit, Path(work)))
                        peaks.append(mine[-1]["peak_mb"])
                    else:
                        theirs.append(lmplz(binary, text, args.order, budget, Path(work)))
                        peaks.append(theirs[-1]["peak_mb"])
        row = {"size": size, "tokens": count, "ours": _median(mine)}
        if theirs:
            row["lmplz"] = _median(theirs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    _table(rows, args, budget)


def _median(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for key in ("seconds", "peak_mb", "build_peak_mb", "tokenize_s", "build_s", "arpa_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = len(runs)
    out["each_s"] = [round(r["seconds"], 1) for r in runs]  # the spread behind the median
    return out


def _table(rows: list[dict], args: argparse.Namespace, budget: int) -> None:
    print(
        f"\n{args.order}-grams, text to ARPA, memory_limit={args.memory_limit} ({budget:,} bytes;"
        f" lmplz -S {budget}b); median of {args.repeats}; peak RSS of each child process (build MB:"
        " ours up to the end of the build, before the ARPA file; in-proc: our three phases"
        " without the interpreter's start and imports); tools alternate going first;"
        f" memory warmed before each run: {'off' if args.warm_mb == 0 else 'on'}"
        f"{f' ({args.warm_mb:g} MB)' if args.warm_mb > 0 else ''}"
    )
    head = (
        f"{'tokens':>11} {'ours s':>8} {'(tok/build/arpa)':>18} {'ours MB':>8} {'build MB':>8} "
        f"{'chunks':>6} {'lmplz s':>8} {'lmplz MB':>9} {'ours/lmplz':>10} {'(in-proc)':>9}  "
        "n-grams (ours | lmplz)"
    )
    print(head)
    for r in rows:
        o, k = r["ours"], r.get("lmplz")
        phases = f"{o['tokenize_s']:.1f}/{o['build_s']:.1f}/{o['arpa_s']:.1f}"
        line = (
            f"{r['tokens']:>11,} {o['seconds']:>8.1f} {phases:>18} {o['peak_mb']:>8.0f} "
            f"{o['build_peak_mb']:>8.0f} {o['chunks']:>6}"
        )
        if k:
            inproc = o["tokenize_s"] + o["build_s"] + o["arpa_s"]
            line += (
                f" {k['seconds']:>8.1f} {k['peak_mb']:>9.0f} {o['seconds'] / k['seconds']:>10.2f}"
                f" {inproc / k['seconds']:>9.2f}  {o['num_ngrams']} | {k['num_ngrams']}"
            )
        else:
            line += f" {'-':>8} {'-':>9} {'-':>10} {'-':>9}  {o['num_ngrams']}"
        print(line)
    toks = [r["tokens"] for r in rows]
    b = exponent(toks, [r["ours"]["seconds"] for r in rows])
    bb = exponent(toks, [r["ours"]["build_s"] for r in rows])
    msg = f"time ~ tokens^b: ours b = {b:.2f} (the build alone {bb:.2f})"
    if all("lmplz" in r for r in rows):
        msg += f", lmplz b = {exponent(toks, [r['lmplz']['seconds'] for r in rows]):.2f}"
    print(msg if len(rows) > 1 else "one size: no exponent")


if __name__ == "__main__":
    main()
