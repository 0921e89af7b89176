"""Runs read back: the runs table, one run in full, comparisons, plots and report pages.

``python -m jaxlm.runs list|show|compare|plot|watch|report`` (also ``jaxlm-runs``) on the
command line; the library modules: ``read`` (finding run folders, reading their files
tolerantly: :func:`~jaxlm.runs.read.load_run`), ``journal`` (the job balancer's state of runs
that were jobs), ``table`` (the table, fitted to the terminal), ``compare``, ``plot``
(matplotlib, imported only to draw) and ``report`` (``report.html``, which every run writes at
its end).

Example:
  >>> from jaxlm.runs import read
  >>> read.find_runs(["runs/never_made"])  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  jaxlm.errors.RunsError: runs/never_made: no such folder
"""
