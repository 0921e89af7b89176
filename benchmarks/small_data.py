"""More from less data: a char LSTM on 10% of Tiny Shakespeare, with and without the data tools.

The training text is the first 10% of Tiny Shakespeare's training part (its first 90%); the
validation text is the whole validation part (its last 10%), the same for every variant. Every
variant is the same small byte-level LSTM (embedding 64, one layer of 256, batch 32 x 64 bytes,
dropout 0.1) trained for the same number of steps with the same seed; only the data differ:

- ``none``: the plain small split;
- ``replace``, ``delete``, ``insert``, ``swap``: each augmentation alone, at ``--rate``;
- ``bootstrap``: the training lines resampled with replacement (a fresh draw per seed);
- ``proxy``: the built-in corpus mixed in as a proxy dataset at ``--proxy_weight`` (the byte
  tokenizer, so both sources share one vocabulary), validated on Tiny Shakespeare.

The report is each variant's validation loss in nats per byte (per character on this ASCII
text) over the whole validation part, at the end of training, and its difference from ``none``.
Steps and shapes are small enough for a CPU; the figures say which tools help in this regime,
not how they scale.

Usage: python benchmarks/small_data.py [--steps 1500] [--rate 0.1] [--variants none,swap]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def small_split(source: Path, folder: Path, fraction: float) -> Path:
    """Writes the small training file and the full validation file into ``folder``.

    Args:
      source: Tiny Shakespeare's ``input.txt``.
      folder: where ``train.txt``, ``valid.txt`` and ``test.txt`` go.
      fraction: the share of the training part (the first 90%) that is kept.

    Returns:
      ``folder``.
    """
    text = source.read_bytes()
    train_end = int(len(text) * 0.9)
    small_end = text.rfind(b"\n", 0, int(train_end * fraction)) + 1  # whole lines
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_bytes(text[:small_end])
    (folder / "valid.txt").write_bytes(text[train_end:])
    (folder / "test.txt").write_bytes(text[train_end:])
    return folder


def variants(rate: float, proxy_weight: float, folder: Path) -> dict[str, dict[str, object]]:
    """Each variant's config overrides on top of :func:`base_config`."""
    target = f"text_files:{folder}"
    return {
        "none": {},
        "replace": {"data.augment.replace": rate},
        "delete": {"data.augment.delete": rate},
        "insert": {"data.augment.insert": rate},
        "swap": {"data.augment.swap": rate},
        "bootstrap": {"data.resample.kind": "bootstrap", "data.resample.unit": "line"},
        "proxy": {  # the mixture names its sources; the target (the first) is validated
            "data.corpus": "builtin",
            "data.path": "",
            "data.mixture": f"shakespeare={target}:{1 - proxy_weight:g},builtin:{proxy_weight:g}",
        },
    }


def base_config(folder: Path, steps: int):
    """The small byte-level LSTM on the small split."""
    from jaxlm.config import load_config

    c = load_config("lstm")
    c.unlock()
    c.name = "lstm_small_data"
    c.data.corpus, c.data.path, c.data.tokenizer = "text_files", str(folder), "byte"
    c.data.batch_size, c.data.seq_len, c.data.eval_batch_size = 32, 64, 32
    c.model.embed_dim, c.model.hidden_sizes, c.model.dropout = 64, (256,), 0.1
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, min(100, steps // 10)
    c.train.num_steps, c.train.eval_every, c.train.eval_steps = steps, steps, 0
    c.train.log_every, c.train.checkpoint_every, c.train.sample_tokens = steps, steps, 0
    return c


def run_variant(config, overrides: dict[str, object], workdir: Path) -> dict[str, float]:
    """Trains one variant; returns its validation loss (nats per byte) and wall time."""
    from jaxlm.config import validate
    from jaxlm.train.loop import train_and_evaluate

    config = config.copy_and_resolve_references()
    for field, value in overrides.items():
        section, *rest = field.split(".")
        node = config[section]
        for name in rest[:-1]:
            node = node[name]
        node[rest[-1]] = value
    config.lock()
    validate(config)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        final = train_and_evaluate(config, workdir)
    return {"validation": float(final["validation_loss"]), "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--rate", type=float, default=0.1, help="each augmentation's rate")
    p.add_argument("--proxy_weight", type=float, default=0.3, help="the built-in corpus's share")
    p.add_argument("--fraction", type=float, default=0.1, help="the training part kept")
    p.add_argument("--variants", default="", help="comma-separated; default: all")
    p.add_argument("--source", type=Path, default=SHAKESPEARE)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if not args.source.is_file():
        p.error(f"--source: {args.source} is not a file; give Tiny Shakespeare's input.txt")

    with tempfile.TemporaryDirectory() as tmp:
        folder = small_split(args.source, Path(tmp) / "ts_small", args.fraction)
        config = base_config(folder, args.steps)
        table = variants(args.rate, args.proxy_weight, folder)
        names = args.variants.split(",") if args.variants else list(table)
        print(
            f"Tiny Shakespeare, {args.fraction:.0%} of its training part "
            f"({(folder / 'train.txt').stat().st_size:,} bytes), the whole validation part "
            f"({(folder / 'valid.txt').stat().st_size:,} bytes); {args.steps} steps of 32x64 "
            f"bytes, a 1x256 byte LSTM; augmentation rate {args.rate}"
        )
        results = {}
        for name in names:
            results[name] = run_variant(config, table[name], Path(tmp) / "runs" / name)
            r = results[name]
            print(f"  ran {name:<10} {r['validation']:.4f} nats/byte in {r['seconds']:.0f} s")
    base = results.get("none", {}).get("validation")
    print("\n| variant | validation nats/char | vs none |\n|---|---|---|")
    for name, r in results.items():
        delta = "" if base is None else f"{r['validation'] - base:+.4f}"
        print(f"| {name} | {r['validation']:.4f} | {delta} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"source": str(args.source), "json": str(args.json)},
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
