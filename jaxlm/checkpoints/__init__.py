"""The one place that knows the on-disk format of runs and checkpoints.

- :mod:`~jaxlm.checkpoints.layout`: where things are (``checkpoints/<step>/{state,meta}``,
  ``model.npz``), resolving a checkpoint path, listing steps.
- :mod:`~jaxlm.checkpoints.meta`: the config and tokenizer JSON stored with each checkpoint,
  upgrading older formats, and what may change when a run resumes.
- :mod:`~jaxlm.checkpoints.store`: orbax's manager: save, restore onto shardings, falling back
  past damaged checkpoints; a failed save as one line.
- :mod:`~jaxlm.checkpoints.lock`: one writer per run folder (an OS file lock).
- :mod:`~jaxlm.checkpoints.read`: reading one checkpoint directly: array metadata, the state as
  numpy on the host, or onto a mesh.
- :mod:`~jaxlm.checkpoints.checksums`: a checksum of every array in each checkpoint's meta
  and SHA-256 digests of an n-gram run's model files, written at save, checked at every read.
- :mod:`~jaxlm.checkpoints.integrity`: :func:`verify_run`, every checkpoint (or model file) of
  a run read and checked, writing nothing.
- :mod:`~jaxlm.checkpoints.run`: :func:`load_run` (model, parameters, tokenizer, config) and
  :func:`load_pretrained` (parameters mapped onto a new vocabulary).
- :mod:`~jaxlm.checkpoints.tools`: inspect, average, export/import, reshard, diff;
  ``python -m jaxlm.checkpoints`` is their command line.

Example:
  >>> from jaxlm import checkpoints
  >>> checkpoints.list_steps("runs/never_made")
  []
"""

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ChecksumMismatch",
    "IncompatibleCheckpoint",
    "Run",
    "SaveFailed",
    "StructureMismatch",
    "Verified",
    "VocabMapping",
    "WorkdirBusy",
    "absolute",
    "checkpoint_dir",
    "config_json",
    "exclusive",
    "holder",
    "incompatible_fields",
    "is_ngram_run",
    "last_checkpoints",
    "latest_intact_step",
    "list_steps",
    "load_pretrained",
    "load_run",
    "load_state",
    "make_meta",
    "manager",
    "metadata_tree",
    "newest_readable_meta",
    "read_meta",
    "restore",
    "restore_latest_intact",
    "restore_sharded",
    "resolve",
    "resume_config",
    "run_config",
    "save",
    "save_failed",
    "step_of",
    "tree_checksums",
    "verify",
    "verify_run",
    "write_checkpoint",
]
_SUBMODULES = ("checksums", "integrity", "layout", "lock", "meta", "read", "run", "store", "tools")
_HOME = {
    **dict.fromkeys(
        ["ChecksumMismatch", "tree_checksums", "verify"], "jaxlm.checkpoints.checksums"
    ),
    **dict.fromkeys(["Verified", "verify_run"], "jaxlm.checkpoints.integrity"),
    **dict.fromkeys(
        [
            "FORMAT_VERSION",
            "absolute",
            "checkpoint_dir",
            "is_ngram_run",
            "last_checkpoints",
            "list_steps",
            "resolve",
            "step_of",
        ],
        "jaxlm.checkpoints.layout",
    ),
    **dict.fromkeys(["exclusive", "holder"], "jaxlm.checkpoints.lock"),
    **dict.fromkeys(
        [
            "config_json",
            "incompatible_fields",
            "make_meta",
            "read_meta",
            "resume_config",
            "run_config",
        ],
        "jaxlm.checkpoints.meta",
    ),
    **dict.fromkeys(["load_state", "metadata_tree", "restore_sharded"], "jaxlm.checkpoints.read"),
    **dict.fromkeys(
        ["Run", "VocabMapping", "load_pretrained", "load_run"], "jaxlm.checkpoints.run"
    ),
    **dict.fromkeys(
        [
            "SaveFailed",
            "StructureMismatch",
            "latest_intact_step",
            "manager",
            "newest_readable_meta",
            "restore",
            "restore_latest_intact",
            "save",
            "save_failed",
            "write_checkpoint",
        ],
        "jaxlm.checkpoints.store",
    ),
    **dict.fromkeys(["CheckpointError", "IncompatibleCheckpoint", "WorkdirBusy"], "jaxlm.errors"),
}
__getattr__, __dir__ = attach(__name__, _HOME, _SUBMODULES)

if TYPE_CHECKING:
    from jaxlm.checkpoints.checksums import ChecksumMismatch, tree_checksums, verify
    from jaxlm.checkpoints.integrity import Verified, verify_run
    from jaxlm.checkpoints.layout import (
        FORMAT_VERSION,
        absolute,
        checkpoint_dir,
        is_ngram_run,
        last_checkpoints,
        list_steps,
        resolve,
        step_of,
    )
    from jaxlm.checkpoints.lock import exclusive, holder
    from jaxlm.checkpoints.meta import (
        config_json,
        incompatible_fields,
        make_meta,
        read_meta,
        resume_config,
        run_config,
    )
    from jaxlm.checkpoints.read import load_state, metadata_tree, restore_sharded
    from jaxlm.checkpoints.run import Run, VocabMapping, load_pretrained, load_run
    from jaxlm.checkpoints.store import (
        SaveFailed,
        StructureMismatch,
        latest_intact_step,
        manager,
        newest_readable_meta,
        restore,
        restore_latest_intact,
        save,
        save_failed,
        write_checkpoint,
    )
    from jaxlm.errors import CheckpointError, IncompatibleCheckpoint, WorkdirBusy
