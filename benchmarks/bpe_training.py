"""How long a byte-level BPE takes to train on the Penn Treebank's training split, and to
encode it: jaxlm's ``SubwordTokenizer`` against Hugging Face ``tokenizers`` used directly.

The target (issue 17): training a BPE of 8,000 tokens on PTB train (5.1 MB) in under 10 s.
The peer is what one would write with ``tokenizers`` alone: ``ByteLevelBPETokenizer`` trained
on the file, and one ``encode`` call on the whole text. Ours trains from the text cut where
the pre-tokenizer cuts and encodes those pieces in parallel (the same ids, tested). Runs
alternate, and the medians are reported with their ratio.

    python benchmarks/bpe_training.py                      # median of 3
    python benchmarks/bpe_training.py --vocab_size=16000 --repeats=5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PTB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptb" / "ptb.train.txt"
TARGET_SECONDS = 10.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default=str(PTB), help="training text (default: PTB train)")
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating")
    args = p.parse_args()
    path = Path(args.path)
    if not path.is_file():
        raise SystemExit(f"{path}: not found (the reference corpora are in ../shared/data)")

    from tokenizers import ByteLevelBPETokenizer

    from jaxlm.data.subword import ENDOFTEXT, SubwordTokenizer

    data = path.read_bytes()
    text = data.decode()
    times: dict[str, list[float]] = {k: [] for k in ("ours", "peer", "enc_ours", "enc_peer")}
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = SubwordTokenizer.train_bpe(data, vocab_size=args.vocab_size)
        times["ours"].append(time.perf_counter() - start)

        start = time.perf_counter()
        peer = ByteLevelBPETokenizer()
        peer.train([str(path)], vocab_size=args.vocab_size, special_tokens=[ENDOFTEXT],
                   show_progress=False)  # fmt: skip
        times["peer"].append(time.perf_counter() - start)

        start = time.perf_counter()
        ids = ours.encode(data)
        times["enc_ours"].append(time.perf_counter() - start)
        start = time.perf_counter()
        peer_ids = ours.tokenizer.encode(text, add_special_tokens=False).ids
        times["enc_peer"].append(time.perf_counter() - start)
        assert ids.tolist() == peer_ids, "pieces encoded apart must give the one call's ids"

    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0]
    print(
        f"{path.name}: {len(data):,} bytes, vocabulary {ours.vocab_size:,} (peer "
        f"{peer.get_vocab_size():,}), {len(ids):,} tokens; {os.cpu_count()} cores, load "
        f"average {load:.1f} (a busy machine slows both sides)"
    )
    print(
        f"train  median of {args.repeats}: jaxlm {med['ours']:.2f} s, tokenizers on the file "
        f"{med['peer']:.2f} s, ratio {med['ours'] / med['peer']:.2f} "
        f"(all: {', '.join(f'{t:.2f}' for t in times['ours'])} s)"
    )
    print(
        f"encode median of {args.repeats}: jaxlm {med['enc_ours']:.2f} s, one encode call "
        f"{med['enc_peer']:.2f} s, ratio {med['enc_ours'] / med['enc_peer']:.2f}"
    )
    verdict = "meets" if med["ours"] < TARGET_SECONDS else "MISSES"
    print(f"target: train under {TARGET_SECONDS:.0f} s: {verdict} ({med['ours']:.2f} s)")


if __name__ == "__main__":
    main()
