"""A self-contained HTML attention viewer: one file, no network, token text always escaped.

The page shows a token strip; hovering a token highlights where the picked head attends from it
and draws, for every head of the picked layer, a bar per key token (the head grid). Layer and
head pickers choose what the strip shows. Data is embedded as JSON with `<`, `>` and `&`
escaped, and tokens are inserted with `textContent`, so a token like `<script>` is shown as text.
Non-finite attention weights (NaN, inf) become JSON `null`, drawn as grey cells with a note.
The title and data go into the page in one pass, so user text is never searched for placeholders.
"""

from __future__ import annotations

import json
import math
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
const L = D.patterns.length, H = D.patterns[0].length, T = D.tokens.length;
let layer = 0, head = 0, query = T - 1;
document.getElementById("title").textContent = D.title;
if (D.nonfinite > 0) {
  const note = document.getElementById("note");
  note.textContent = D.nonfinite + " attention weights are NaN or infinite; shown as grey cells";
  note.hidden = false;
}
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
for (let i = 0; i < L; i++) layerSel.add(new Option(String(i), String(i)));
for (let h = 0; h < H; h++) headSel.add(new Option(String(h), String(h)));
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
  const row = D.patterns[layer][head][query];
  spans.forEach((s, i) => {
    const a = row[i];
    s.style.backgroundColor = a === null ? "#bbb" : "rgba(51, 102, 204, " + a.toFixed(3) + ")";
    s.style.color = a !== null && a > 0.5 ? "white" : "black";
    s.dataset.attn = a === null ? "nan" : a.toFixed(3);
    s.className = i === query ? "query" : "";
  });
  document.getElementById("info").textContent =
    " query " + query + " " + JSON.stringify(D.tokens[query]) + " (L" + layer + "H" + head + ")";
  grid.replaceChildren();
  for (let h = 0; h < H; h++) {
    const box = document.createElement("div");
    box.className = "head" + (h === head ? " picked" : "");
    const name = document.createElement("div");
    name.textContent = "L" + layer + "H" + h;
    const bars = document.createElement("div");
    bars.className = "bars";
    D.patterns[layer][h][query].forEach((a) => {
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


def _weight(a: float) -> float | None:
    """A weight rounded for the page; None (JSON null) for NaN and infinities."""
    return round(a, 3) if math.isfinite(a) else None


def attention_html(tokens: Sequence[str], patterns: torch.Tensor, title: str = "attention") -> str:
    """The viewer page for token strings [T] and patterns [L, H, T, T]."""
    T = len(tokens)
    if patterns.dim() != 4 or tuple(patterns.shape[-2:]) != (T, T) or patterns.numel() == 0:
        raise InputError(
            f"patterns must be [layers, heads, T, T] with T={T} tokens (none of them 0); "
            f"got {tuple(patterns.shape)}"
        )
    p = patterns.detach().float().cpu()
    data = {
        "title": str(title),
        "tokens": [str(t) for t in tokens],
        "nonfinite": int((~torch.isfinite(p)).sum()),
        "patterns": [
            [[[_weight(a) for a in row] for row in head.tolist()] for head in layer] for layer in p
        ],
    }
    values = {"TITLE": _escape_html(str(title)), "DATA": _json_for_html(data)}
    return re.sub(r"__(TITLE|DATA)__", lambda m: values[m.group(1)], _PAGE)  # one pass


def write_viewer(
    path: str | Path, tokens: Sequence[str], patterns: torch.Tensor, title: str = "attention"
) -> Path:
    """Write the viewer page to `path` (a single .html file)."""
    return atomic_write(path, attention_html(tokens, patterns, title))


def model_viewer(
    model,
    tokens: torch.Tensor,
    token_strings: Sequence[str],
    path: str | Path,
    title: str = "attention",
) -> Path:
    """Run `model` on one sequence [1, T], cache every pattern and write the viewer."""
    n = model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    _, cache = run_with_cache(model, tokens[:1], names_filter=names)
    patterns = torch.stack([cache[nm][0] for nm in names])
    return write_viewer(path, token_strings, patterns, title)
