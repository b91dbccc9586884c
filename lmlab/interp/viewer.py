"""A self-contained HTML attention viewer: one file, no network, token text always escaped.

The page shows a token strip; hovering a token highlights where the picked head attends from it
and draws, for every head of the picked layer, a bar per key token (the head grid). Layer and
head pickers choose what the strip shows. Data is embedded as JSON with `<`, `>` and `&`
escaped, and tokens are inserted with `textContent`, so a token like `<script>` is shown as text.
Non-finite attention weights (NaN, inf) are drawn as grey cells with a note.
The title and data go into the page in one pass, so user text is never searched for placeholders.

To keep the page small, weights are stored as one byte each (0-254 for 0-1, steps of 1/254;
255 for a non-finite weight), base64-encoded, and only the requested layers and heads are kept:
SmolLM2's 30 layers x 9 heads over 81 tokens take 2.4 MB, the 8 layers of its top induction heads
0.6 MB (as JSON floats: about 10 MB).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from lmlab.errors import InputError
from lmlab.interp.activation_cache import run_with_cache
from lmlab.runs import atomic_write

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1em; }
#strip span { display: inline-block; padding: 2px 3px; margin: 1px; border: 1px solid #ccc; white-space: pre;
  font-family: monospace; cursor: pointer; }
#strip span.query { outline: 2px solid #d33; }
#grid { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 1em; }
.head { border: 1px solid #ddd; padding: 4px; font-size: 11px; cursor: pointer; }
.head.picked { border-color: #d33; }
.bars { display: flex; align-items: flex-end; height: 40px; gap: 1px; }
.bars div { width: 5px; background: #36c; }
.bars div.nan { background: #bbb; }
#note { color: #a40; }
</style></head><body>
<h3 id="title"></h3>
<p id="note" hidden></p>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<span id="info"></span>
<div id="strip"></div>
<div id="grid"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const L = D.layers.length, H = D.heads.length, T = D.tokens.length;
const bin = atob(D.patterns), Q = new Uint8Array(bin.length);
for (let i = 0; i < bin.length; i++) Q[i] = bin.charCodeAt(i);
function weights(l, h, q) {  // one query row: numbers in [0, 1], null where not finite
  const o = ((l * H + h) * T + q) * T;
  return Array.from(Q.subarray(o, o + T), (v) => (v === 255 ? null : v / D.scale));
}
let layer = 0, head = 0, query = T - 1;
document.getElementById("title").textContent = D.title;
if (D.nonfinite > 0) {
  const note = document.getElementById("note");
  note.textContent = D.nonfinite + " attention weights are NaN or infinite; shown as grey cells";
  note.hidden = false;
}
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
for (let i = 0; i < L; i++) layerSel.add(new Option(String(D.layers[i]), String(i)));
for (let h = 0; h < H; h++) headSel.add(new Option(String(D.heads[h]), String(h)));
const strip = document.getElementById("strip"), grid = document.getElementById("grid");
const spans = D.tokens.map((tok, i) => {
  const s = document.createElement("span");
  s.textContent = tok;
  s.dataset.index = String(i);
  s.addEventListener("mouseenter", () => { query = i; render(); });
  strip.appendChild(s);
  return s;
});
function render() {
  const row = weights(layer, head, query);
  spans.forEach((s, i) => {
    const a = row[i];
    s.style.backgroundColor = a === null ? "#bbb" : "rgba(51, 102, 204, " + a.toFixed(3) + ")";
    s.style.color = a !== null && a > 0.5 ? "white" : "black";
    s.dataset.attn = a === null ? "nan" : a.toFixed(3);
    s.className = i === query ? "query" : "";
  });
  document.getElementById("info").textContent =
    " query " + query + " " + JSON.stringify(D.tokens[query]) +
    " (L" + D.layers[layer] + "H" + D.heads[head] + ")";
  grid.replaceChildren();
  for (let h = 0; h < H; h++) {
    const box = document.createElement("div");
    box.className = "head" + (h === head ? " picked" : "");
    const name = document.createElement("div");
    name.textContent = "L" + D.layers[layer] + "H" + D.heads[h];
    const bars = document.createElement("div");
    bars.className = "bars";
    weights(layer, h, query).forEach((a) => {
      const b = document.createElement("div");
      if (a === null) b.className = "nan";
      b.style.height = (a === null ? 40 : Math.max(1, Math.round(40 * a))) + "px";
      bars.appendChild(b);
    });
    box.append(name, bars);
    box.addEventListener("click", () => { head = h; headSel.value = String(h); render(); });
    grid.appendChild(box);
  }
}
layerSel.addEventListener("change", () => { layer = Number(layerSel.value); render(); });
headSel.addEventListener("change", () => { head = Number(headSel.value); render(); });
render();
</script></body></html>
"""


def _json_for_html(obj: object) -> str:
    """JSON safe inside a <script> element (no `</script>`, no HTML-significant characters)."""
    text = json.dumps(obj, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


SCALE = 254  # a stored byte b < 255 means the weight b / SCALE
NONFINITE = 255  # the byte of a NaN or infinite weight


def quantize(patterns: torch.Tensor) -> torch.Tensor:
    """Weights in [0, 1] as uint8 bytes (`round(w * SCALE)`, clamped); NONFINITE where not finite."""
    p = patterns.detach().float().cpu()
    q = (p.nan_to_num(0.0, 0.0, 0.0).clamp(0, 1) * SCALE).round().to(torch.uint8)
    return q.masked_fill(~torch.isfinite(p), NONFINITE)


def _pick(name: str, wanted: Sequence[int] | None, n: int) -> list[int]:
    if wanted is None:
        return list(range(n))
    picked = [int(i) for i in wanted]
    if not picked or any(not 0 <= i < n for i in picked):
        raise InputError(f"{name} must be a non-empty list of indices in 0..{n - 1}; got {picked}")
    return picked


def attention_html(
    tokens: Sequence[str],
    patterns: torch.Tensor,
    title: str = "attention",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> str:
    """The viewer page for token strings [T] and patterns [L, H, T, T], keeping only `layers` and
    `heads` (indices into L and H; default all)."""
    T = len(tokens)
    if patterns.dim() != 4 or tuple(patterns.shape[-2:]) != (T, T) or patterns.numel() == 0:
        raise InputError(
            f"patterns must be [layers, heads, T, T] with T={T} tokens (none of them 0); "
            f"got {tuple(patterns.shape)}"
        )
    layers = _pick("layers", layers, patterns.shape[0])
    heads = _pick("heads", heads, patterns.shape[1])
    q = quantize(patterns[layers][:, heads]).contiguous()
    data = {
        "title": str(title),
        "tokens": [str(t) for t in tokens],
        "layers": layers,
        "heads": heads,
        "scale": SCALE,
        "nonfinite": int((q == NONFINITE).sum()),
        "patterns": base64.b64encode(q.numpy().tobytes()).decode("ascii"),
    }
    values = {"TITLE": _escape_html(str(title)), "DATA": _json_for_html(data)}
    return re.sub(r"__(TITLE|DATA)__", lambda m: values[m.group(1)], _PAGE)  # one pass


def write_viewer(
    path: str | Path,
    tokens: Sequence[str],
    patterns: torch.Tensor,
    title: str = "attention",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Path:
    """Write the viewer page to `path` (a single .html file); see `attention_html`."""
    return atomic_write(path, attention_html(tokens, patterns, title, layers, heads))


def model_viewer(
    model,
    tokens: torch.Tensor,
    token_strings: Sequence[str],
    path: str | Path,
    title: str = "attention",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Path:
    """Run `model` on one sequence [1, T], cache every pattern and write the viewer of `layers`
    and `heads` (default all)."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, cache = run_with_cache(model, tokens[:1], names_filter=names)
    patterns = torch.stack([cache[nm][0] for nm in names])
    return write_viewer(path, token_strings, patterns, title, layers, heads)
