"""Hyperparameter search (:mod:`jaxlm.search.population`: many trials in one compiled step)."""
