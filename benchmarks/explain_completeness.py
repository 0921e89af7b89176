"""Integrated gradients' completeness on trained runs, by the number of steps.

For each run folder given, every next-token prediction over a text (``targets="all"``) is
attributed by integrated gradients at 16, 32, 64 and 128 steps, and the report is the median
and the worst relative completeness gap, ``|sum(attributions) + carry - (f(x) - f(baseline))|
/ |f(x) - f(baseline)|``, over the predictions. The issue's bar is 1% at 64 steps.

Usage: python benchmarks/explain_completeness.py runs/lstm runs/transformer [--text "..."]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = "The result of the expression is the value of its last operand, and the"
STEPS = (16, 32, 64, 128)


def gaps(workdir: str, text: str) -> dict[int, np.ndarray]:
    """Each prediction's relative completeness gap, per step count."""
    import jaxlm
    from jaxlm.explain import attribute

    model, params, tokenizer, _ = jaxlm.load_run(workdir)
    tokens = tokenizer.encode(text)
    out = {}
    for steps in STEPS:
        e = attribute(model, params, tokens, "all", method="ig", steps=steps)
        out[steps] = np.abs([t.completeness_gap for t in e.targets])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--text", default=TEXT)
    args = p.parse_args()
    print("| run | predictions | " + " | ".join(f"{s} steps" for s in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for workdir in args.workdirs:
        by_steps = gaps(workdir, args.text)
        cells = [
            f"{100 * np.median(g):.4f}% (worst {100 * g.max():.4f}%)" for g in by_steps.values()
        ]
        print(f"| {workdir} | {len(by_steps[STEPS[0]])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
