"""Explain a language model's predictions: ``python -m jaxlm.explain`` and :func:`attribute`.

See docs/explain.md. The library call::

    from jaxlm import explain, load_run

    model, params, tokenizer, config = load_run("runs/lstm")
    e = explain.attribute(model, params, tokenizer.encode("The cat"), method=("ig", "gxi"))
    e.targets[0].attributions["ig"]  # one score per token of the text

Modules: :mod:`.core` (diagnostics, integrated gradients, gradient x input, saliency,
occlusion), :mod:`.attention` (Transformer attention maps and rollout), :mod:`.ngram` (back-off
paths of n-gram models), :mod:`.render` (terminal, JSON and HTML), :mod:`.checks` (the
randomisation check).
"""

from jaxlm._lazy import attach

__all__ = [
    "METHODS",
    "SCORES",
    "Attention",
    "Diagnostics",
    "Explanation",
    "NGramStep",
    "NGramToken",
    "Target",
    "TargetAttribution",
    "attention_maps",
    "attribute",
    "explain_ngram",
    "gauss_legendre",
    "randomisation_check",
    "rollout",
    "to_html",
    "to_json",
    "to_terminal",
]
_HOME = {
    "METHODS": "jaxlm.explain.core",
    "SCORES": "jaxlm.explain.core",
    "Diagnostics": "jaxlm.explain.core",
    "Explanation": "jaxlm.explain.core",
    "Target": "jaxlm.explain.core",
    "TargetAttribution": "jaxlm.explain.core",
    "attribute": "jaxlm.explain.core",
    "gauss_legendre": "jaxlm.explain.core",
    "Attention": "jaxlm.explain.attention",
    "attention_maps": "jaxlm.explain.attention",
    "rollout": "jaxlm.explain.attention",
    "NGramStep": "jaxlm.explain.ngram",
    "NGramToken": "jaxlm.explain.ngram",
    "explain_ngram": "jaxlm.explain.ngram",
    "randomisation_check": "jaxlm.explain.checks",
    "to_html": "jaxlm.explain.render",
    "to_json": "jaxlm.explain.render",
    "to_terminal": "jaxlm.explain.render",
}
__getattr__, __dir__ = attach(__name__, _HOME)
