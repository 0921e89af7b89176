"""Checkpoint tools as library functions: inspect, average, arrays (export/import), reshard,
diff. ``python -m jaxlm.checkpoints`` (or ``tools/checkpoint.py``) is their command line."""

from jaxlm.checkpoints.tools.arrays import export, import_arrays, read_arrays, write_arrays
from jaxlm.checkpoints.tools.average import average
from jaxlm.checkpoints.tools.diff import diff, format_diff
from jaxlm.checkpoints.tools.inspect import format_inspect, inspect
from jaxlm.checkpoints.tools.reshard import parse_rules, reshard, saved_shardings

__all__ = [
    "average",
    "diff",
    "export",
    "format_diff",
    "format_inspect",
    "import_arrays",
    "inspect",
    "parse_rules",
    "read_arrays",
    "reshard",
    "saved_shardings",
    "write_arrays",
]
