"""The HTML attention viewer: self-contained, token text escaped, NaN weights drawn grey with a
note, hostile titles shown as text, weights stored as bytes for the picked layers and heads (a
page under 1 MB for SmolLM2's top layers), reacts to hover in headless Chromium."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
import subprocess

import pytest
import torch

from lmlab.errors import InputError
from lmlab.families import preset
from lmlab.interp.viewer import attention_html, model_viewer, write_viewer
from lmlab.model import Transformer

TOKENS = ["<bos>", "<script>alert(1)</script>", " &amp;", ' "q"', "</script>", " cat", " sat"]


def patterns() -> torch.Tensor:
    torch.manual_seed(0)
    p = torch.rand(2, 3, len(TOKENS), len(TOKENS)).tril()
    return p / p.sum(-1, keepdim=True)


def test_page_is_self_contained_and_escapes_tokens():
    html = attention_html(TOKENS, patterns(), title="<b>t</b>")
    assert "<script>alert" not in html and '</script>"' not in html
    assert html.count("</script>") == 2  # the data block and the code, nothing from the tokens
    assert "http://" not in html and "https://" not in html and "src=" not in html
    assert "&lt;b&gt;t&lt;/b&gt;" in html
    with pytest.raises(ValueError, match="T=6 tokens"):
        attention_html(TOKENS[:-1], patterns())


HOSTILE_TITLE = 'my __DATA__ </script><script>alert("t")</script> & __TITLE__'


def _data_block(page: str) -> dict:
    """The JSON of the page's data element, parsed the way the page's script parses it."""
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    assert m is not None, "no data block"
    return json.loads(m.group(1), parse_constant=_not_json)  # NaN is not JSON (JSON.parse fails)


def _not_json(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _weights(data: dict) -> torch.Tensor:
    """The page's weights decoded as its script decodes them: [layers, heads, T, T], NaN for null."""
    q = torch.tensor(list(base64.b64decode(data["patterns"])), dtype=torch.float32)
    T = len(data["tokens"])
    q = q.reshape(len(data["layers"]), len(data["heads"]), T, T)
    return torch.where(q == 255, float("nan"), q / data["scale"])


def nan_patterns() -> torch.Tensor:
    p = patterns()
    p[1, 2, 4, :] = float("nan")  # a whole row (e.g. a fully masked query)
    p[0, 0, 3, 1] = float("inf")
    return p


def test_nan_attention_and_hostile_title_render():
    page = attention_html(TOKENS, nan_patterns(), title=HOSTILE_TITLE)
    data = _data_block(page)
    assert data["title"] == HOSTILE_TITLE and data["tokens"] == TOKENS
    assert data["nonfinite"] == len(TOKENS) + 1
    w = _weights(data)
    assert w[1, 2, 4].isnan().all() and w[0, 0, 3, 1].isnan() and w.isnan().sum() == len(TOKENS) + 1
    finite = ~w.isnan()
    assert (w[finite] - patterns()[finite]).abs().max() <= 0.5 / 254 + 1e-7  # one byte per weight
    title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
    assert html_lib.unescape(title) == HOSTILE_TITLE  # shown as text
    assert page.count("</script>") == 2 and "<script>alert" not in page
    assert 'id="note"' in page and "a === null" in page  # null weights are drawn, with a note
    clean = _data_block(attention_html(TOKENS, patterns()))
    assert clean["nonfinite"] == 0 and not _weights(clean).isnan().any()


def test_only_picked_layers_and_heads_are_stored():
    data = _data_block(attention_html(TOKENS, patterns(), layers=[1], heads=[2, 0]))
    assert data["layers"] == [1] and data["heads"] == [2, 0]
    w = _weights(data)
    assert w.shape == (1, 2, len(TOKENS), len(TOKENS))
    assert torch.allclose(w[0], patterns()[1, [2, 0]], atol=0.5 / 254 + 1e-7)
    with pytest.raises(InputError, match=r"layers must be .* indices in 0\.\.1"):
        attention_html(TOKENS, patterns(), layers=[2])
    with pytest.raises(InputError, match="heads must be a non-empty list"):
        attention_html(TOKENS, patterns(), heads=[])


def test_smollm2_sized_page_stays_under_a_megabyte():
    """The induction-heads recipe's page: SmolLM2 (30 layers x 9 heads) on 81 tokens, 8 layers kept."""
    T = 81
    p = torch.rand(30, 9, T, T).tril()
    p = p / p.sum(-1, keepdim=True)
    tokens = [f"r{i}" for i in range(T)]
    picked = len(attention_html(tokens, p, layers=[0, 2, 3, 4, 5, 7, 9, 12]))
    assert picked < 1_000_000, picked
    assert len(attention_html(tokens, p)) < 2_500_000  # every layer: one byte per weight


# a stand-in for the few DOM calls the page makes, so Node can run its script without a browser
_FAKE_DOM = r"""
class El {
  constructor(id) { this.id = id; this.children = []; this.style = {}; this.dataset = {};
    this.textContent = ""; this.hidden = false; this.className = ""; this.value = ""; }
  add(o) { this.children.push(o); } appendChild(c) { this.children.push(c); return c; }
  append(...c) { this.children.push(...c); } replaceChildren() { this.children = []; }
  addEventListener(type, fn) { (this.on = this.on || {})[type] = fn; }
}
const els = {};
globalThis.document = {
  getElementById: (id) => (els[id] = els[id] || new El(id)),
  createElement: () => new El(null),
};
globalThis.Option = class { constructor(text, value) { this.text = text; this.value = value; } };
document.getElementById("data").textContent = require("fs").readFileSync(process.argv[2], "utf8");
"""
_REPORT = r"""
const spansEl = els["strip"].children;
spansEl[4].on.mouseenter();
const first = spansEl.map((s) => s.dataset.attn);
els["layer"].value = "1"; els["layer"].on.change();
els["head"].value = "2"; els["head"].on.change();
const noteEl = document.getElementById("note");
console.log(JSON.stringify({title: els["title"].textContent, note: noteEl.textContent,
  noteHidden: noteEl.hidden, first, nanRow: spansEl.map((s) => s.dataset.attn),
  heights: els["grid"].children.map((box) =>
    box.children[1].children.map((b) => b.style.height))}));
"""


_LABELS = r"""
els["strip"].children[3].on.mouseenter();
console.log(JSON.stringify({layers: els["layer"].children.map((o) => o.text),
  labels: els["grid"].children.map((box) => box.children[0].textContent),
  row: els["strip"].children.map((s) => s.dataset.attn)}));
"""


def _run_page_script(page: str, tmp_path, report: str = _REPORT) -> dict:
    """Run the page's own script in Node against a fake DOM; returns what it rendered."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to run the page script (apt-get install -y nodejs)")
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    code = re.search(r"<script>(.*?)</script>", page, re.S)
    (tmp_path / "data.json").write_text(data.group(1))
    (tmp_path / "page.js").write_text(_FAKE_DOM + code.group(1) + report)
    r = subprocess.run(
        [node, tmp_path / "page.js", tmp_path / "data.json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_page_script_runs_with_nan_weights(tmp_path):
    out = _run_page_script(attention_html(TOKENS, nan_patterns(), HOSTILE_TITLE), tmp_path)
    assert out["title"] == HOSTILE_TITLE
    assert not out["noteHidden"] and "NaN" in out["note"]
    assert len(out["first"]) == len(TOKENS) and out["first"][5:] == ["0.000", "0.000"]
    assert out["nanRow"] == ["nan"] * len(TOKENS)  # layer 1, head 2, query 4: all NaN, drawn grey
    assert len(out["heights"]) == 3 and out["heights"][2] == ["40px"] * len(TOKENS)
    clean = _run_page_script(attention_html(TOKENS, patterns()), tmp_path)
    assert clean["note"] == "" and "nan" not in clean["first"] + clean["nanRow"]
    picked = attention_html(TOKENS, patterns(), layers=[1], heads=[2, 0])
    out = _run_page_script(picked, tmp_path, _LABELS)
    assert out["layers"] == ["1"] and out["labels"] == ["L1H2", "L1H0"]
    want = [round(float(w), 3) for w in _weights(_data_block(picked))[0, 0, 3]]
    assert [float(a) for a in out["row"]] == want and want[:4] != [0.0] * 4


def _browser():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium: install the Debian package (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "playwright is not installed (pip install playwright); it drives the system Chromium"
        )
    return path, sync_playwright


@pytest.mark.slow
def test_viewer_in_headless_chromium(tmp_path):
    path, sync_playwright = _browser()
    page_file = write_viewer(tmp_path / "viewer.html", TOKENS, patterns(), title="test")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda d: errors.append(f"dialog {d.message}"))
        page.goto(page_file.as_uri())
        spans = page.locator("#strip span")
        assert spans.count() == len(TOKENS)
        assert spans.nth(1).text_content() == "<script>alert(1)</script>"  # shown as text, not run
        assert spans.nth(2).text_content() == " &amp;"

        def attn() -> list[str]:
            return [spans.nth(i).get_attribute("data-attn") for i in range(len(TOKENS))]

        before = attn()
        spans.nth(3).hover()
        after = attn()
        assert after != before
        assert after[4:] == ["0.000"] * 3  # causal: query 3 sees nothing later
        assert "query" in (spans.nth(3).get_attribute("class") or "")
        grid_before = page.locator("#grid").inner_html()
        page.select_option("#layer", "1")
        assert page.locator("#grid").inner_html() != grid_before
        assert page.locator(".head").count() == 3
        page.select_option("#head", "2")
        assert attn() != after
        nan_file = write_viewer(tmp_path / "nan.html", TOKENS, nan_patterns(), HOSTILE_TITLE)
        page.goto(nan_file.as_uri())
        assert page.locator("#strip span").count() == len(TOKENS)  # not a blank page
        assert page.locator("#title").text_content() == HOSTILE_TITLE
        assert "NaN" in (page.locator("#note").text_content() or "")
        assert page.locator("#note").is_visible()
        page.select_option("#layer", "1")
        page.select_option("#head", "2")
        spans.nth(4).hover()
        assert attn() == ["nan"] * len(TOKENS)
        browser.close()
    assert errors == []


def test_model_viewer_writes_a_page(tmp_path):
    m = Transformer(preset("gpt2-tiny")).eval()
    out = model_viewer(m, torch.arange(6)[None], [f"t{i}" for i in range(6)], tmp_path / "v.html")
    assert out.read_text().count('"t5"') == 1
