"""The HTML attention viewer: self-contained, token text escaped, reacts to hover in headless Chromium."""

from __future__ import annotations

import shutil

import pytest
import torch

from lmlab.config import preset
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
        browser.close()
    assert errors == []


def test_model_viewer_writes_a_page(tmp_path):
    m = Transformer(preset("gpt2-tiny")).eval()
    out = model_viewer(m, torch.arange(6)[None], [f"t{i}" for i in range(6)], tmp_path / "v.html")
    assert out.read_text().count('"t5"') == 1
