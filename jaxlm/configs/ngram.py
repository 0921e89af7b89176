"""N-gram language model, interpolated modified Kneser-Ney (the statistical baseline).

Variants: ``configs/ngram.py`` (default: character 6-gram on the built-in corpus, seconds),
``:smoke`` (character trigram, for tests), ``:ptb`` (word 5-gram on ../shared/data/ptb, no
cut-offs: test perplexity 141.2 in Mikolov 2012).

``model`` fields: ``order``; ``method`` ("modified_kneser_ney", "kneser_ney", "absolute",
"add_k"); ``discount`` (() estimates them from counts of counts; else (D1, D2, D3+) or 3 per order
for modified KN, one value or one per order otherwise); ``discount_fallback`` (used for orders
whose discounts cannot be estimated; () raises instead); ``k`` (add_k); ``cutoffs`` (per order,
drop n-grams seen at most this often; missing orders repeat the last; () keeps all); ``add_bos``
(start sentences from ``<s>``); ``write_arpa`` (also save ``model.arpa``); ``arpa_precision``
("float32": its values to float32, as KenLM writes them; "float64": exact); ``memory_limit`` (None:
count in memory; bytes, "4GB" or a fraction of RAM: count in chunks spilled to disk, the same
model) and ``tmp_dir`` (where they spill; "": the run folder). The LSTM fields of the base config
are ignored.
"""

import ml_collections

from jaxlm.config import base_config
from jaxlm.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: None, "smoke" or "ptb"."""
    c = base_config("ngram")  # the model fields and their defaults: jaxlm.models.ngram.NGramLM
    c.name = "ngram"
    c.model.order = 6
    if arg in (None, ""):
        pass
    elif arg == "smoke":
        c.name = "ngram_smoke"
        c.model.order = 3
    elif arg == "ptb":
        c.name = "ngram_ptb"
        c.data.corpus = "text_files"
        c.data.path = "../shared/data/ptb"
        c.data.tokenizer = "word"
        c.model.order = 5
        c.train.sample_prompt = "the "  # PTB is lower case (as configs/ptb.py)
        c.train.sample_tokens = 50
    else:
        raise ConfigError(f"configs/ngram.py: unknown variant {arg!r}; expected smoke or ptb")
    c.lock()
    return c
