"""Times ``inspect`` on a checkpoint of a GPT-2-small-sized model (about 124M parameters).

Writes a random-init checkpoint with orbax (parameters plus Adam moments, as training saves
them) into a temporary folder, then times (a) ``jaxlm.checkpoints.tools.inspect`` in this
process and (b) the whole ``python tools/checkpoint.py inspect DIR --json`` command, and
deletes the folder unless ``--keep``.

Usage:
  python benchmarks/inspect_large.py [--layers 12] [--width 768] [--vocab 50257] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def gpt2_like_params(layers: int, width: int, vocab: int, positions: int, seed: int = 0) -> dict:
    """A GPT-2-shaped parameter tree with random normal(0, 0.02) values."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def ln() -> dict:
        return {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)}

    params = {
        "embed": {"embedding": w(vocab, width)},
        "pos_embed": {"embedding": w(positions, width)},
    }
    for i in range(layers):
        params[f"blocks_{i}"] = {
            "ln_1": ln(),
            "attn": {
                "qkv": {"kernel": w(width, 3 * width), "bias": np.zeros(3 * width, np.float32)},
                "out": {"kernel": w(width, width), "bias": np.zeros(width, np.float32)},
            },
            "ln_2": ln(),
            "mlp": {
                "fc": {"kernel": w(width, 4 * width), "bias": np.zeros(4 * width, np.float32)},
                "proj": {"kernel": w(4 * width, width), "bias": np.zeros(width, np.float32)},
            },
        }
    params["ln_f"] = ln()
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint folder")
    args = parser.parse_args()

    from absl import logging

    logging.set_verbosity(logging.ERROR)
    from jaxlm import checkpoints
    from jaxlm.checkpoints import tools as ct
    from jaxlm.config import base_config
    from jaxlm.tree import flatten

    params = gpt2_like_params(args.layers, args.width, args.vocab, args.positions)
    n_params = sum(a.size for a in flatten(params).values())

    def zeros(tree: dict) -> dict:
        return {k: zeros(v) if isinstance(v, dict) else np.zeros_like(v) for k, v in tree.items()}

    state = {
        "step": np.int32(1000),
        "params": params,
        "opt_state": [None, [{"count": np.int32(1000), "mu": zeros(params), "nu": zeros(params)}]],
        "rng": np.zeros(2, np.uint32),
    }
    config = base_config("transformer")
    config.model.embed_dim = args.width
    config.model.num_layers = args.layers
    config.model.num_heads = args.width // 64
    meta = {
        "config": checkpoints.config_json(config),
        "tokenizer": {"kind": "byte"},
    }
    folder = Path(tempfile.mkdtemp(prefix="jaxlm-inspect-large-"))
    try:
        start = time.perf_counter()
        ckpt = checkpoints.write_checkpoint(folder / "run", 1000, state, meta)
        write_s = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        print(
            f"wrote {ckpt}: {n_params:,} parameters ({n_params / 1e6:.1f}M), "
            f"{len(flatten(state))} arrays with the Adam moments, {disk / 2**30:.2f} GiB "
            f"on disk, in {write_s:.1f} s"
        )
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = ct.inspect(ckpt)
            times.append(time.perf_counter() - start)
        assert report["totals"]["params"]["count"] == n_params
        print(
            f"inspect() in process: median {statistics.median(times):.3f} s, "
            f"min {min(times):.3f} s over {args.repeats} runs"
        )
        walls = []
        for _ in range(max(1, args.repeats // 2)):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, str(ROOT / "tools/checkpoint.py"), "inspect", str(ckpt), "--json"],
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - start)
        print(
            f"python tools/checkpoint.py inspect --json (whole process, imports included): "
            f"median {statistics.median(walls):.3f} s"
        )
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
