"""jaxlm.checkpoints.store: atomic saves, damaged checkpoints named, skipped and set aside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import sharding
from tests.helpers import train_state_target

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from jaxlm import checkpoints as ck

    mgr = ck.manager(sys.argv[1], keep=5)
    meta = {"config": {"name": "atomic"}, "tokenizer": {}}
    ck.save(mgr, 1, {"step": np.int32(1), "params": {"w": np.full((1000,), 1, np.float32)}}, meta)
    mgr.wait_until_finished()
    big = np.random.default_rng(0).standard_normal(60_000_000, dtype=np.float32)
    print("SAVING", flush=True)
    ck.save(mgr, 2, {"step": np.int32(2), "params": {"w": big}}, meta)
    mgr.wait_until_finished()
    print("SAVED", flush=True)
    """
)


def test_interrupted_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert proc.stdout.readline().strip() == "SAVING"
        ckdir = workdir / "checkpoints"
        deadline = time.monotonic() + 60
        while not [p for p in ckdir.iterdir() if p.name.startswith("2")]:
            assert time.monotonic() < deadline and proc.poll() is None, "save never started"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-save
    finally:
        proc.kill()
        proc.wait()
    leftovers = [p.name for p in ckdir.iterdir() if p.name != "1"]
    assert leftovers and all(not name.isdigit() for name in leftovers), leftovers
    assert ck.list_steps(workdir) == [1]
    state, meta = ck.load_state(workdir)
    np.testing.assert_array_equal(state["params"]["w"], np.full(1000, 1, np.float32))
    mgr = ck.manager(workdir, read_only=True)
    try:
        assert mgr.latest_step() == 1
        assert ck.latest_intact_step(mgr) == 1
    finally:
        mgr.close()


def _truncate_largest_data_file(step_dir: Path) -> Path:
    files = sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda f: f.stat().st_size)
    with open(files[-1], "r+b") as f:
        f.truncate(files[-1].stat().st_size // 3)
    return files[-1]


def test_damaged_checkpoint_is_named_and_skipped(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    newest = workdir / "checkpoints/3"
    _truncate_largest_data_file(newest)
    mesh = sharding.make_mesh()
    target = train_state_target(run, mesh)
    mgr = ck.manager(workdir, keep=3)
    try:
        with pytest.raises(ck.CheckpointError, match=str(newest)):
            ck.restore(mgr, target)
        lines = []
        state, meta, step = ck.restore_latest_intact(mgr, target, log=lines.append)
        assert step == 2 and int(state.step) == 2
        assert str(newest) in lines[0] and "Skipping" in lines[0]
        want = ck.load_state(run / "checkpoints/2")[0]["params"]["head"]["kernel"]
        np.testing.assert_array_equal(state.params["head"]["kernel"], want)
        # Metadata-level damage is seen without reading arrays.
        assert ck.latest_intact_step(mgr) == 3  # data damage shows only when read
        (workdir / "checkpoints/2/state/_METADATA").unlink()
        shutil.rmtree(workdir / "checkpoints/3/meta")
        assert ck.latest_intact_step(mgr) == 1
        state, _, step = ck.restore_latest_intact(mgr, target, log=lines.append)
        assert step == 1
        assert [line.split(":")[0] for line in lines[2:4]] == [
            f"Skipping damaged checkpoint {workdir / 'checkpoints' / str(s)}" for s in (3, 2)
        ]
    finally:
        mgr.close()
    with pytest.raises(ck.CheckpointError, match=str(workdir / "checkpoints/3")):
        ck.load_state(workdir, 3)
    # Quarantined, the damaged checkpoints leave the step list, so those steps can be saved again.
    mgr = ck.manager(workdir, keep=3)
    try:
        lines = []
        _, _, step = ck.restore_latest_intact(mgr, target, log=lines.append, quarantine=True)
        assert step == 1 and mgr.all_steps() == [1]
        assert (workdir / "checkpoints/3.damaged").is_dir()
        assert (workdir / "checkpoints/2.damaged").is_dir()
        assert ck.list_steps(workdir) == [1]
    finally:
        mgr.close()
