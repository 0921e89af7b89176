"""Whether a run's saved files are the ones that were saved: ``python -m jaxlm.checkpoints verify``.

Every checkpoint is read whole to the host (:func:`~jaxlm.checkpoints.load_state`) and its
arrays checked against the checksums in its meta (:mod:`jaxlm.checkpoints.checksums`); an
n-gram run's model files are checked against ``model.checksums.json``. Nothing is locked or
written, so a run can be checked while it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from jaxlm.checkpoints.checksums import ChecksumMismatch, model_files_status
from jaxlm.checkpoints.layout import (
    NGRAM_ARPA,
    NGRAM_CHECKSUMS,
    NGRAM_MODEL,
    STATE_ITEM,
    PathLike,
    absolute,
    is_ngram_run,
    list_steps,
    resolve,
    step_of,
)
from jaxlm.checkpoints.read import load_state
from jaxlm.errors import CheckpointError

OK, DAMAGED, UNCHECKED = "ok", "damaged", "unchecked"
_NO_CHECKSUMS = "no checksums (saved before jaxlm wrote them)"


class Verified(NamedTuple):
    """What :func:`verify_run` found for one checkpoint or model file.

    Attributes:
      path: the checkpoint folder or model file (absolute).
      step: the checkpoint's step; None for a model file.
      status: ``"ok"``, ``"damaged"`` or ``"unchecked"`` (read whole, but saved without
        checksums to compare with).
      detail: why it is damaged or unchecked; empty when ok.
    """

    path: str
    step: int | None
    status: str
    detail: str = ""

    def line(self) -> str:
        """``<path>: ok``, ``<path>: damaged: <why>`` or ``<path>: no checksums (...)``."""
        if self.status == DAMAGED:
            return f"{self.path}: damaged: {self.detail}"
        return f"{self.path}: {self.detail or self.status}"


def verify_run(path: PathLike, step: int | None = None) -> list[Verified]:
    """Reads every checkpoint of a run (or an n-gram run's model files) and checks its checksums.

    Args:
      path: a run folder (all its checkpoints, or an n-gram run's model files), its
        ``checkpoints/`` folder, or one checkpoint folder.
      step: check only this checkpoint of a run folder.

    Returns:
      One :class:`Verified` per checkpoint (oldest first) or model file.

    Raises:
      CheckpointError: ``path`` holds no checkpoint and is no n-gram run (bad input, not
        damage: damage is reported in the results).

    Example:
      >>> [(r.step, r.status) for r in verify_run("runs/lstm_smoke")]  # doctest: +SKIP
      [(30, 'ok'), (60, 'ok')]
    """
    folder = absolute(path)
    if is_ngram_run(folder):
        if step is not None:
            raise CheckpointError(f"{folder} is an n-gram run: it has no checkpoint of step {step}")
        return _verify_model_files(folder)
    if (folder / STATE_ITEM).is_dir() or step is not None:
        return [_verify_checkpoint(resolve(folder, step))]
    steps = list_steps(folder)
    if not steps:
        resolve(folder)  # raises, naming what is there instead
    return [_verify_checkpoint(resolve(folder, s)) for s in steps]


def _verify_checkpoint(ckpt: Path) -> Verified:
    """Reads one checkpoint to the host; :func:`load_state` verifies its checksums."""
    try:
        _, meta = load_state(ckpt)
    except CheckpointError as e:
        return Verified(str(ckpt), step_of(ckpt), DAMAGED, _without_prefix(str(e), ckpt))
    if meta.get("checksums") is None:
        return Verified(str(ckpt), step_of(ckpt), UNCHECKED, _NO_CHECKSUMS)
    return Verified(str(ckpt), step_of(ckpt), OK)


def _without_prefix(message: str, where: Path) -> str:
    """The message without a leading ``<where>: `` (the line names it already)."""
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _verify_model_files(folder: Path) -> list[Verified]:
    """One result per model file the checksums list (every model file there without them)."""
    try:
        status = model_files_status(folder)
    except ChecksumMismatch as e:  # the checksums file itself is damaged
        record = folder / NGRAM_CHECKSUMS
        return [Verified(str(record), None, DAMAGED, _without_prefix(str(e), record))]
    if status is None:
        present = [n for n in (NGRAM_MODEL, NGRAM_ARPA) if (folder / n).is_file()]
        return [Verified(str(folder / n), None, UNCHECKED, _NO_CHECKSUMS) for n in present]
    return [
        Verified(str(folder / name), None, DAMAGED, problem)
        if problem
        else Verified(str(folder / name), None, OK)
        for name, problem in status.items()
    ]
