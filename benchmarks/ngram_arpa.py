"""The ARPA writer against the one it replaced (one ``repr`` and one join per n-gram).

Builds the PTB word 5-gram (``../shared/data/ptb``; the built-in corpus's character 6-gram
when PTB is not there), then writes its ARPA file with each writer in turn, ``--repeats``
times, checks that the two files are byte-identical, and prints the median wall and CPU
seconds of each and their ratio. The machine is shared: the CPU times are the steadier figure.

    python benchmarks/ngram_arpa.py
    python benchmarks/ngram_arpa.py --repeats 5 --corpus builtin
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxlm.models import ngram  # noqa: E402
from jaxlm.models.ngram import arpa  # noqa: E402
from tests.models.ngram.test_arpa import reference_write_arpa  # noqa: E402


def _model(corpus: str) -> ngram.NGramModel:
    ptb = ROOT / ".." / "shared" / "data" / "ptb"
    if corpus == "ptb" and (ptb / "ptb.train.txt").exists():
        from jaxlm.data.tokenizers import WordTokenizer

        text = (ptb / "ptb.train.txt").read_text()
        tok = WordTokenizer.train(text)
        return ngram.build(tok.encode(text), tok.vocab_size, 5, eos_id=tok.eos_id, vocab=tok.vocab)
    if corpus == "ptb":
        print(f"{ptb} is not there: the built-in corpus instead")
    from jaxlm.data.builders import builtin_text
    from jaxlm.data.tokenizers import CharTokenizer

    text = builtin_text().decode()
    tok = CharTokenizer.train(text)
    return ngram.build(tok.encode(text), tok.vocab_size, 6, vocab=tok.vocab)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed writes per writer, alternating")
    p.add_argument("--corpus", choices=("ptb", "builtin"), default="ptb")
    args = p.parse_args()
    model = _model(args.corpus)
    print(f"{model.order}-gram, n-grams per order {model.num_ngrams}")
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "old": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"ours": Path(tmp) / "ours.arpa", "old": Path(tmp) / "old.arpa"}
        writers = {"ours": arpa.write_arpa, "old": reference_write_arpa}
        for _ in range(args.repeats):
            for name, write in writers.items():
                wall, cpu = time.perf_counter(), time.process_time()
                write(model, paths[name])
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        same = paths["ours"].read_bytes() == paths["old"].read_bytes()
        size = paths["ours"].stat().st_size
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    for name in ("ours", "old"):
        print(f"{name:>4}: {med[name][0]:.2f} s wall, {med[name][1]:.2f} s CPU (median)")
    print(
        f"old / ours: {med['old'][0] / med['ours'][0]:.2f}x wall, "
        f"{med['old'][1] / med['ours'][1]:.2f}x CPU; {size:,} bytes, "
        f"{'byte-identical' if same else 'DIFFERENT FILES'}"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
