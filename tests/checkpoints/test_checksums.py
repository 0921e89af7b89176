"""jaxlm.checkpoints.checksums: damaged bytes are caught at restore, named and set aside."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import sharding
from jaxlm.checkpoints import checksums, read
from jaxlm.checkpoints.checksums import ChecksumMismatch, tree_checksums, verify
from tests.helpers import train_state_target


def _largest_data_file(step_dir: Path) -> Path:
    files = (step_dir / "state").glob("ocdbt.process_*/d/*")
    return max(files, key=lambda f: f.stat().st_size)


def _flip_bits(path: Path, offsets: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_host_and_device_checksums_agree_for_every_dtype():
    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "bf16": jnp.asarray(rng.standard_normal(7), jnp.bfloat16),
        "i8": rng.integers(-100, 100, 9).astype(np.int8),
        "bool": np.array([True, False, True]),
        "scalar": np.int32(7),
    }
    on_host = {k: np.asarray(v) for k, v in tree.items()}
    on_device = {k: jnp.asarray(v) for k, v in tree.items()}
    assert tree_checksums(on_host) == tree_checksums(on_device)
    # A sharded array sums to the same numbers without being gathered.
    mesh = sharding.make_mesh(4, 1)
    spread = jax.device_put(on_host["f32"][:, :4], jax.NamedSharding(mesh, jax.P(None, "data")))
    assert tree_checksums({"x": spread}) == tree_checksums({"x": on_host["f32"][:, :4]})


def test_host_blocks_sum_to_the_device_numbers(monkeypatch):
    # The host sums block by block; blocks of 7 words put every boundary case in a small array.
    monkeypatch.setattr(checksums, "_CHUNK", 7)
    rng = np.random.default_rng(1)
    tree = {
        "f32": rng.standard_normal((5, 9)).astype(np.float32),  # 45 words: a partial last block
        "u8": rng.integers(0, 256, 28).astype(np.uint8),  # exactly 4 blocks
        "f16": rng.standard_normal(3).astype(np.float16),  # less than a block
    }
    assert tree_checksums(tree) == tree_checksums({k: jnp.asarray(v) for k, v in tree.items()})


def test_checksums_see_moved_and_changed_bits():
    x = np.arange(8, dtype=np.float32)
    base = tree_checksums({"x": x})["x"]
    assert tree_checksums({"x": x[::-1].copy()})["x"] != base  # same words, other order
    y = x.copy()
    y.view(np.uint32)[3] ^= 1 << 31
    y.view(np.uint32)[5] ^= 1 << 31  # two flips that leave a plain sum unchanged
    assert tree_checksums({"x": y})["x"] != base
    verify({"x": x}, {"x": base}, "here")
    verify({"x": y}, None, "here")  # a checkpoint saved before checksums: nothing to check
    with pytest.raises(ChecksumMismatch, match="here: the bytes of x are not"):
        verify({"x": y}, {"x": base}, "here")


def test_flipped_bits_are_caught_and_the_previous_checkpoint_used(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    newest = workdir / "checkpoints/3"
    damaged = _largest_data_file(newest)
    size = damaged.stat().st_size
    _flip_bits(damaged, [size // 2, size // 2 + 37])
    with pytest.raises(ck.CheckpointError, match=str(newest)):
        ck.load_state(workdir, 3)
    target = train_state_target(run, sharding.make_mesh())
    mgr = ck.manager(workdir, keep=3)
    try:
        lines = []
        state, _, step = ck.restore_latest_intact(mgr, target, log=lines.append, quarantine=True)
        assert step == 2 and int(state.step) == 2
        assert str(newest) in lines[0]
        assert (workdir / "checkpoints/3.damaged").is_dir()
    finally:
        mgr.close()


def _overwrite_where_it_still_decodes(run, workdir) -> Any:
    """Overwrites 2,000 bytes of the newest checkpoint's largest data file where they still
    decode without an error (zstd checks some places, not raw blocks of numbers), as a failing
    disk or a stray write might; returns what the checkpoint then reads back, unchecked."""
    damaged = _largest_data_file(workdir / "checkpoints/3")
    original = damaged.read_bytes()
    noise = np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes()
    for eighth in range(1, 8):  # where the files' arrays lie varies from one save to another
        start = len(original) * eighth // 8
        damaged.write_bytes(original[:start] + noise + original[start + 2000 :])
        with mock.patch.object(read, "verify", lambda *args: None):  # as before checksums
            try:
                return ck.load_state(workdir, 3)[0]
            except ck.CheckpointError:  # zstd refused these bytes: another place
                continue
    raise AssertionError(f"no place in {damaged} where overwritten bytes still decode")


def test_overwritten_bytes_are_caught(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    unchecked = _overwrite_where_it_still_decodes(run, workdir)  # reads back without error...
    saved, _ = ck.load_state(run, 3)
    assert not all(  # ...and is not what was saved
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(unchecked), jax.tree.leaves(saved), strict=True)
    )
    with pytest.raises(ck.ChecksumMismatch, match=str(workdir / "checkpoints/3")):
        ck.load_state(workdir, 3)
    np.testing.assert_array_equal(  # the checkpoint before is untouched
        ck.load_state(workdir, 2)[0]["params"]["head"]["kernel"],
        ck.load_state(run, 2)[0]["params"]["head"]["kernel"],
    )


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_verify_reads_every_checkpoint_of_an_intact_run_and_writes_nothing(run, cli, capsys):
    before = _snapshot(run)
    assert cli(["verify", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{run / 'checkpoints' / str(s)}: ok" for s in (1, 2, 3)] + [
        "3 ok, 0 damaged, 0 saved without checksums (read whole, nothing to compare)"
    ]
    assert _snapshot(run) == before
    assert cli(["verify", str(run / "checkpoints"), "--step", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] is True
    assert [(r["step"], r["status"]) for r in report["results"]] == [(2, "ok")]
    assert ck.verify_run(run / "checkpoints/3") == [
        ck.Verified(str(run / "checkpoints/3"), 3, "ok")
    ]


def test_verify_names_the_damaged_checkpoint_and_moves_nothing(run, tmp_path, cli, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    newest = workdir / "checkpoints/3"
    damaged = _largest_data_file(newest)
    size = damaged.stat().st_size
    _flip_bits(damaged, [size // 2, size // 2 + 37])
    assert cli(["verify", str(workdir)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"{workdir / 'checkpoints' / str(s)}: ok" for s in (1, 2)]
    # Flipped bits show as a checksum mismatch, or where they land in compressed bytes, as
    # bytes that cannot be read: either way that checkpoint is named damaged.
    assert lines[2].startswith(f"{newest}: damaged: ")
    assert "checksum mismatch" in lines[2] or "cannot read" in lines[2]
    assert lines[3].startswith("2 ok, 1 damaged")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2", "3"]
    assert cli(["verify", str(workdir), "--step", "2"]) == 0
    capsys.readouterr()
    assert cli(["verify", str(newest), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["intact"] is False
    assert [(r["step"], r["status"]) for r in report["results"]] == [(3, "damaged")]


def _drop_checksums(step_dir: Path) -> None:
    """Rewrites a checkpoint's meta as jaxlm wrote it before checksums (and its digest)."""
    meta_file = step_dir / "meta/metadata"  # orbax's JSON item
    meta = json.loads(meta_file.read_text())
    del meta["checksums"], meta["meta_sha256"]
    meta_file.write_text(json.dumps(meta))


def test_verify_reads_checkpoints_saved_before_checksums(run, tmp_path, cli, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    _drop_checksums(workdir / "checkpoints/1")
    assert cli(["verify", str(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"{workdir / 'checkpoints/1'}: no checksums (saved before jaxlm wrote them)"
    )
    assert lines[1:3] == [f"{workdir / 'checkpoints' / str(s)}: ok" for s in (2, 3)]
    assert lines[3].startswith("2 ok, 0 damaged, 1 saved without checksums")


def test_verify_refuses_a_folder_without_checkpoints(tmp_path, cli, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_steps/checkpoints").mkdir(parents=True)
    cases = {
        "empty": "is not a jaxlm checkpoint: expected a run folder with checkpoints/",
        "no_steps": "no finished checkpoint in",
        "nowhere": "does not exist",
    }
    for name, message in cases.items():
        assert cli(["verify", str(tmp_path / name)]) == 2
        out = capsys.readouterr()
        assert out.out == ""
        (line,) = out.err.splitlines()
        assert line.startswith("error: ") and str(tmp_path / name) in line and message in line


def test_verify_of_an_undecodable_manifest_prints_one_verdict_and_no_traceback(
    run, tmp_path, cli, capfd
):
    # The array metadata is read by many concurrent reads; the first that fails raises while
    # the others are in flight, and their completions must not reach a closed event loop.
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    manifest = workdir / "checkpoints/3/state/manifest.ocdbt"
    data = bytearray(manifest.read_bytes())
    data[14:18] = bytes(4)  # the zstd frame's magic number: nothing decodes
    manifest.write_bytes(bytes(data))
    assert cli(["verify", str(workdir)]) == 1
    out = capfd.readouterr()
    lines = out.out.splitlines()
    assert lines[2].startswith(f"{workdir / 'checkpoints/3'}: damaged: cannot read the array")
    assert "Traceback" not in out.err and "Event loop is closed" not in out.err, out.err


def test_a_changed_character_in_the_meta_json_is_caught_and_skipped(run, tmp_path, cli, capsys):
    # The tokenizer and config come from the meta: one changed character would resume the run
    # with another vocabulary (a silently different run) or refuse it as "incompatible".
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    newest = workdir / "checkpoints/3"
    meta_file = newest / "meta/metadata"
    text = meta_file.read_text()
    assert '"A", "B"' in text
    meta_file.write_text(text.replace('"A", "B"', '"A", "C"', 1))
    with pytest.raises(ChecksumMismatch, match="its meta JSON"):
        ck.read_meta(newest)
    target = train_state_target(run, sharding.make_mesh())
    mgr = ck.manager(workdir, keep=3)
    try:
        assert ck.newest_readable_meta(mgr)[0] == 2
        lines = []
        _, _, step = ck.restore_latest_intact(mgr, target, log=lines.append)
        assert step == 2 and lines[0].startswith(f"Skipping damaged checkpoint {newest}")
    finally:
        mgr.close()
    assert cli(["verify", str(workdir)]) == 1
    assert "its meta JSON" in capsys.readouterr().out.splitlines()[2]


def test_model_checksums_take_digests_given_and_read_the_rest(tmp_path):
    (tmp_path / "model.npz").write_bytes(b"npz bytes")
    (tmp_path / "model.arpa").write_bytes(b"arpa bytes")
    given = hashlib.sha256(b"arpa bytes").hexdigest()
    checksums.write_model_checksums(tmp_path, ["model.npz", "model.arpa"], {"model.arpa": given})
    saved = json.loads((tmp_path / "model.checksums.json").read_text())["files"]
    assert saved["model.arpa"] == {"sha256": given, "bytes": 10}
    assert saved["model.npz"]["sha256"] == hashlib.sha256(b"npz bytes").hexdigest()
    assert checksums.model_files_status(tmp_path) == {"model.npz": None, "model.arpa": None}
