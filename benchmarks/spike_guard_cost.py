"""What the spike guard (``config.monitor.spike_factor`` / ``grad_factor``,
:func:`jaxlm.transforms.guard_spikes`) adds to a training step, on the default char LSTM
(``configs/lstm.py``) and on ``configs/transformer.py``.

For each recipe, two runs of the same model side by side in one process: the guard off, and on
(loss and gradient-norm checks, policy ``skip``: the costliest, a ``where`` over the updates and
the optimizer state). Each side steps as ``python -m jaxlm.train`` does: the step compiled ahead
of time (``jaxlm.train.plan``), each step's batch read on the host and placed. Timed runs
alternate between the sides (``benchmarks/_harness.py``); the line gives the medians and the
ratio on/off of the step time, and of the process CPU time per step (steadier on a shared
machine). Run it from the repository root with the tree on the path
(``PYTHONPATH=. python benchmarks/spike_guard_cost.py``).

Usage:
  python benchmarks/spike_guard_cost.py [--recipes lstm,transformer] [--steps 20] [--repeats 5]
  python benchmarks/spike_guard_cost.py --recipes lstm --steps 5 --repeats 2    # a quick check
"""

from __future__ import annotations

import argparse

import _harness


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _harness.add_common_args(p, steps=20)
    p.add_argument("--recipes", default="lstm,transformer", help="comma-separated recipe names")
    args = p.parse_args()
    _harness.setup(args)
    import numpy as np

    from jaxlm import data
    from jaxlm.config import load_config

    for recipe in args.recipes.split(","):
        off = load_config(recipe)
        on = load_config(recipe)
        guard = {"spike_factor": 3.0, "grad_factor": 10.0}
        on.monitor.update({**guard, "spike_policy": "skip", "grad_policy": "skip"})
        corpus = data.load_corpus(off.data, seed=off.seed)
        times = _harness.time_alternating(
            {"off": _harness.trainer(off, corpus), "on": _harness.trainer(on, corpus)}, args
        )
        t_off, t_on = (np.median(times[k][:, 0]) for k in ("off", "on"))
        c_off, c_on = (np.median(times[k][:, 1]) for k in ("off", "on"))
        ratios = times["on"][:, 0] / times["off"][:, 0]
        print(
            f"{recipe:11s} guard off {t_off * 1e3:7.1f} ms/step | on {t_on * 1e3:7.1f} ms/step | "
            f"on/off {t_on / t_off:.3f} (runs {ratios.min():.3f}-{ratios.max():.3f}) | "
            f"process CPU on/off {c_on / c_off:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
