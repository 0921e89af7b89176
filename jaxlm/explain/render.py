"""An :class:`~jaxlm.explain.Explanation` as JSON, as coloured (or plain) terminal text, and as a
self-contained HTML page (inline CSS and JavaScript, no network fetches).

The JSON schema (``"schema": "jaxlm.explain/1"``) is documented in docs/explain.md; the page
embeds that same JSON and draws everything from it, so the tests check the page's data by
reading it back (:func:`html_data`).
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.explain.core import Explanation

SCHEMA = "jaxlm.explain/1"


def token_texts(tokenizer: Any, ids: Any) -> list[str]:
    """Each token's text as it appears in the decoded text (bytes read as UTF-8, a split
    character as U+FFFD; a byte tokenizer's ``<eos>`` as its name).

    Args:
      tokenizer: a jaxlm tokenizer, or None (ids shown as ``#id``).
      ids: token ids.

    Returns:
      One string per token.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> token_texts(CharTokenizer.train("ab "), [1, 2, 3])
      [' ', 'a', 'b']
    """
    ids = np.asarray(ids).reshape(-1).tolist()
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    out = []
    for i, piece in zip(ids, tokenizer.token_bytes(ids), strict=True):
        out.append(piece.decode("utf-8", "replace") if piece else tokenizer.vocab[i])
    return out


def _num(x: Any) -> float | None:
    """A JSON number: NaN and infinities as null."""
    x = float(x)
    return x if math.isfinite(x) else None


def _entry(tokenizer: Any, i: int, prob: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": int(i), "text": token_texts(tokenizer, [i])[0]}
    if prob is not None:
        out["prob"] = _num(prob)
    return out


def _ngram_entry(tok: Any, order: int) -> dict[str, Any]:
    return {
        "prob": _num(tok.prob),
        "log_prob": _num(tok.log_prob),
        "order": tok.order,
        "backoffs": tok.backoffs,
        "summary": tok.summary(order),
        "path": [
            {
                "order": s.order,
                "context": list(s.context),
                "found": s.found,
                "log_prob": None if s.log_prob is None else _num(s.log_prob),
                "log_backoff": None if s.log_backoff is None else _num(s.log_backoff),
                "count": s.count,
                "context_count": s.context_count,
            }
            for s in tok.path
        ],
    }


def to_json(
    explanation: Explanation,
    tokenizer: Any = None,
    *,
    text: str | None = None,
    model_name: str | None = None,
    ngram: list | None = None,
    ngram_order: int | None = None,
) -> dict[str, Any]:
    """The explanation as a JSON-ready dict (schema ``jaxlm.explain/1``, docs/explain.md).

    Args:
      explanation: from :func:`~jaxlm.explain.attribute`.
      tokenizer: the model's tokenizer (token texts); None shows ids.
      text: the text explained, kept as it was given.
      model_name: the run's ``config.model.name``.
      ngram: an n-gram model's :class:`~jaxlm.explain.ngram.NGramToken` for each token, shown
        beside a neural model's probabilities (``--ngram``); an n-gram explanation has its own.
      ngram_order: that n-gram model's order.

    Returns:
      A dict of lists, numbers and strings (NaN as None).

    Example:
      >>> data = to_json(explanation, tokenizer)  # doctest: +SKIP
      >>> data["tokens"][1]["surprisal_bits"]  # doctest: +SKIP
      3.1
    """
    e, d = explanation, explanation.diagnostics
    texts = token_texts(tokenizer, e.tokens)
    own_ngram = e.ngram
    beside = ngram if ngram is not None else own_ngram
    order = ngram_order or e.options.get("ngram_order")
    tokens = []
    for i, (tid, piece) in enumerate(zip(e.tokens.tolist(), texts, strict=True)):
        row: dict[str, Any] = {"index": i, "id": int(tid), "text": piece}
        if i > 0:
            j = i - 1  # the prediction of token i was made after token i - 1
            row.update(
                prob=_num(d.actual_prob[j]),
                rank=int(d.actual_rank[j]),
                surprisal_bits=_num(d.surprisal_bits[j]),
                entropy_bits=_num(d.entropy_bits[j]),
                top=[
                    _entry(tokenizer, t, p)
                    for t, p in zip(d.top_ids[j].tolist(), d.top_probs[j].tolist(), strict=True)
                ],
            )
        else:
            row.update(prob=None, rank=None, surprisal_bits=None, entropy_bits=None, top=[])
        if beside is not None:
            row["ngram"] = _ngram_entry(beside[i], order)
        tokens.append(row)
    last = len(e.tokens) - 1
    targets = []
    for t in e.targets:
        targets.append(
            {
                "position": t.position,
                "predicts_index": t.position + 1,
                "token": _entry(tokenizer, t.token),
                "contrast": None if t.contrast is None else _entry(tokenizer, t.contrast),
                "score": _num(t.score),
                "baseline_score": None if t.baseline_score is None else _num(t.baseline_score),
                "completeness_gap": None
                if t.completeness_gap is None
                else _num(t.completeness_gap),
                "attributions": {m: [_num(v) for v in a] for m, a in t.attributions.items()},
                "carry": {m: _num(v) for m, v in t.carry.items()},
            }
        )
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "model": {"kind": e.model_kind, "name": model_name},
        "text": text,
        "start": e.start,
        "methods": list(e.methods),
        "options": {k: v for k, v in e.options.items() if isinstance(v, int | float | str | None)},
        "tokens": tokens,
        "next": {
            "entropy_bits": _num(d.entropy_bits[last]),
            "top": [
                _entry(tokenizer, t, p)
                for t, p in zip(d.top_ids[last].tolist(), d.top_probs[last].tolist(), strict=True)
            ],
        },
        "targets": targets,
        "attention": None,
        "warnings": list(e.warnings),
    }
    if e.attention is not None:
        out["attention"] = {
            "maps": np.round(e.attention.maps, 5).tolist(),
            "rollout": np.round(e.attention.rollout, 5).tolist(),
        }
    return out


def dumps(data: dict[str, Any]) -> str:
    """:func:`to_json`'s dict as JSON text (strict: no NaN)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------------------------
# The terminal.


def _bg(value: float, scale: float, diverging: bool) -> str:
    """An ANSI 256-colour background for ``value`` in ``[-scale, scale]`` (or ``[0, scale]``)."""
    x = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    level = int(round(abs(x) * 5))
    if diverging and x < 0:
        code = 16 + 36 * (5 - level) + 6 * (5 - level) + 5  # white to blue
    else:
        code = 16 + 36 * 5 + 6 * (5 - level) + (5 - level)  # white to red
    return f"\x1b[48;5;{code}m\x1b[38;5;16m"


_RESET = "\x1b[0m"


def _show(piece: str) -> str:
    return piece.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _heat(pieces: list[str], values: list[float | None], plain: bool, diverging: bool) -> str:
    finite = [abs(v) for v in values if v is not None]
    scale = max(finite) if finite else 1.0
    if plain:
        return " ".join(
            f"{_show(p)!r}" + ("" if v is None else f"[{v:+.3g}]" if diverging else f"[{v:.3g}]")
            for p, v in zip(pieces, values, strict=True)
        )
    return "".join(
        (_show(p) if v is None else f"{_bg(v, scale, diverging)}{_show(p)}{_RESET}")
        for p, v in zip(pieces, values, strict=True)
    )


def to_terminal(data: dict[str, Any], *, plain: bool = False, words: dict | None = None) -> str:
    """Text for the terminal: the text coloured by surprisal, a table of the predictions, and
    each target's attributions (coloured: red adds to the score, blue takes from it).

    Args:
      data: :func:`to_json`'s dict.
      plain: no colours (for pipes): each token followed by its value in brackets.
      words: optional ``{target index: (words, scores)}`` of word-level scores to print.

    Returns:
      The text, ending with a newline.

    Example:
      >>> print(to_terminal(to_json(explanation, tokenizer), plain=True))  # doctest: +SKIP
    """
    lines = []
    pieces = [t["text"] for t in data["tokens"]]
    model = data["model"]
    lines.append(
        f"{model.get('name') or model['kind']}: {len(pieces)} tokens"
        + (f" (the first {data['start']} before the window)" if data["start"] else "")
    )
    for w in data["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("surprisal (bits) of each token given the ones before it:")
    lines.append("  " + _heat(pieces, [t["surprisal_bits"] for t in data["tokens"]], plain, False))
    lines.append("")
    header = f"  {'#':>3}  {'token':<10} {'prob':>7} {'rank':>5} {'bits':>6} {'entropy':>7}  top"
    lines.append(header)
    for t in data["tokens"][1:]:
        top = ", ".join(f"{_show(c['text'])!r} {c['prob']:.2f}" for c in t["top"])
        ng = ""
        if "ngram" in t:
            ng = f"  | {t['ngram']['summary']}"
        lines.append(
            f"  {t['index']:>3}  {_show(t['text'])!r:<10} {t['prob']:>7.3f} {t['rank']:>5} "
            f"{t['surprisal_bits']:>6.2f} {t['entropy_bits']:>7.2f}  {top}{ng}"
        )
    nxt = ", ".join(f"{_show(c['text'])!r} {c['prob']:.2f}" for c in data["next"]["top"])
    lines.append(f"  next: {nxt} (entropy {data['next']['entropy_bits']:.2f} bits)")
    for k, tgt in enumerate(data["targets"]):
        where = tgt["predicts_index"]
        what = repr(_show(tgt["token"]["text"]))
        if tgt["contrast"] is not None:
            what += f" rather than {_show(tgt['contrast']['text'])!r}"
        at = "after the text" if where == len(pieces) else f"at token {where}"
        lines.append("")
        lines.append(f"why {what} {at}: score {tgt['score']:.4f} ({data['options'].get('score')})")
        for method, values in tgt["attributions"].items():
            carry = tgt["carry"].get(method)
            extra = ""
            if method == "ig" and tgt["baseline_score"] is not None:
                total = sum(v for v in values if v is not None) + (carry or 0.0)
                change = tgt["score"] - tgt["baseline_score"]
                extra = f"  (sum {total:.4f}; score - baseline {change:.4f})"
            lines.append(f"  {method}:{extra}")
            shown = pieces[: len(values)]
            lines.append("    " + _heat(shown, values, plain, method != "saliency"))
            if carry is not None and data["start"]:
                lines.append(f"    the state before the window: {carry:+.4f}")
        if words and k in words:
            ws, scores = words[k]
            lines.append(
                "  per word: "
                + ", ".join(f"{w!r} {s:+.3g}" for w, s in zip(ws, scores, strict=True))
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The page.


def _asset(name: str) -> str:
    """The page's stylesheet or script, shipped beside this module."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def to_html(data: dict[str, Any], title: str = "jaxlm explain") -> str:
    """A self-contained page: the text as a heatmap (surprisal, entropy, a target's
    attributions or a Transformer's attention), a click on a token shows its top-k, its n-gram
    path and the attributions of its prediction, and a method switch. No network fetches: the
    CSS, the script and the data (``<script type="application/json" id="data">``) are inline.

    Args:
      data: :func:`to_json`'s dict.
      title: the page title.

    Returns:
      The HTML text.

    Example:
      >>> page = to_html(to_json(explanation, tokenizer))  # doctest: +SKIP
    """
    payload = dumps(data).replace("</", "<\\/")  # no "</script>" inside the data
    text = data.get("text")
    heading = html_lib.escape(
        f"{data['model'].get('name') or data['model']['kind']}"
        + (f": {text[:80]!r}" if text else "")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>
<style>{_asset("page.css")}</style></head>
<body><div id="main"><h1>{heading}</h1>
<div class="controls">colour by:
<label><input type="radio" name="view" value="surprisal" checked> surprisal</label>
<label><input type="radio" name="view" value="entropy"> entropy</label>
<label><input type="radio" name="view" value="attribution"> attribution</label>
<select id="method" aria-label="method"></select>
<span id="attn"><label><input type="radio" name="view" value="attention"> attention</label>
<select id="layer" aria-label="layer"></select><select id="head" aria-label="head"></select></span>
</div>
<div id="text"></div>
<p class="legend">Red: more surprising, or adds to the prediction's score; blue: takes from it.
Click a token: its prediction and why (the attributions of its prediction over the tokens
before it).</p></div>
<div id="side"></div>
<script type="application/json" id="data">{payload}</script>
<script>{_asset("page.js")}</script>
</body></html>
"""


_DATA = re.compile(r'<script type="application/json" id="data">(.*?)</script>', re.S)


def html_data(page: str) -> dict[str, Any]:
    """The JSON a page of :func:`to_html` embeds (what its script draws).

    Args:
      page: the HTML text.

    Returns:
      The dict.

    Raises:
      ValueError: the page holds no data block.

    Example:
      >>> html_data(to_html({"model": {"kind": "ngram"}, "x": 1}))["x"]
      1
    """
    m = _DATA.search(page)
    if m is None:
        raise ValueError("no jaxlm.explain data in the page")
    return json.loads(m.group(1).replace("<\\/", "</"))
