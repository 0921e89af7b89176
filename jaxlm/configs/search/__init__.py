"""The search spaces shipped with jaxlm: ``--space=configs/search/lstm.py[:variant]`` from the
repository (``configs/`` links to ``jaxlm/configs/``), or ``--space=lstm:grid`` from any folder.

Each file has ``get_space(arg=None)`` returning dotted config fields mapped to distributions
(:mod:`jaxlm.search.space`).
"""
