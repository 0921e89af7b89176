"""jaxlm.checkpoints.tools.diff: leaf-by-leaf differences of two checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm.checkpoints import tools as ct


def test_diff(run, tmp_path, cli):
    same = ct.diff(run, run)
    assert same["identical"] and same["max_abs"] == 0.0 and same["max_rel"] == 0.0
    state, meta = ck.load_state(run)
    bias = state["params"]["head"]["bias"]
    before = bias[5]
    bias[5] = before + np.float32(0.25)
    ck.write_checkpoint(tmp_path / "perturbed", 3, state, meta)
    report = ct.diff(run, tmp_path / "perturbed")
    assert not report["identical"]
    changed = [r for r in report["leaves"] if not r["equal"]]
    assert [r["path"] for r in changed] == ["params/head/bias"]
    expected = abs(float(bias[5]) - float(before))
    assert report["max_abs"] == pytest.approx(expected, rel=0, abs=0)
    scale = max(abs(float(before)), abs(float(bias[5])))
    assert report["max_rel"] == pytest.approx(expected / scale)
    steps = ct.diff(run, run, step_a=2, step_b=3)
    assert not steps["identical"] and steps["max_abs"] > 0
    assert cli(["diff", str(run), str(run)]) == 0
    assert cli(["diff", str(run), str(tmp_path / "perturbed")]) == 1
