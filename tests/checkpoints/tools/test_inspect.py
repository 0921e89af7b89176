"""jaxlm.checkpoints.tools.inspect: a checkpoint described from its metadata alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm.checkpoints import tools as ct
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.tree import flatten


def test_inspect_reports_the_real_tree_from_metadata_only(run, tmp_path, cli, capsys):
    state, meta = ck.load_state(run)
    report = ct.inspect(run)
    assert report["step"] == 3 and report["steps"] == [1, 2, 3]
    assert report["tokenizer"] == {
        "kind": "char",
        "vocab_size": tokenizer_from_json(meta["tokenizer"]).vocab_size,
    }
    assert report["config"]["model"]["hidden_sizes"] == [64, 64]
    real = {n: np.asarray(a) for n, a in flatten(state).items()}
    got = {r["path"]: r for r in report["leaves"]}
    assert set(got) == set(real)
    for name, a in real.items():
        assert got[name]["shape"] == list(a.shape)
        assert got[name]["dtype"] == a.dtype.name
        assert got[name]["size"] == a.size and got[name]["bytes"] == a.nbytes
    n_params = sum(a.size for n, a in real.items() if n.startswith("params/"))
    assert report["totals"]["params"]["count"] == n_params
    assert report["totals"]["all"]["bytes"] == sum(a.nbytes for a in real.values())

    # Remove every array data file: inspect still reports the same, reading really fails.
    copy = tmp_path / "checkpoints/3"
    shutil.copytree(run / "checkpoints/3", copy)
    data_files = list((copy / "state").glob("ocdbt.process_*/d/*"))
    assert data_files
    for f in data_files:
        f.unlink()
    stripped = ct.inspect(copy)
    assert stripped["leaves"] == report["leaves"] and stripped["totals"] == report["totals"]
    with pytest.raises(ck.CheckpointError, match=str(copy)):
        ck.load_state(copy)

    assert cli(["inspect", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["leaves"] == report["leaves"] and printed["seconds"] < 5
    assert cli(["inspect", str(run)]) == 0
    assert "params/head/kernel" in capsys.readouterr().out
