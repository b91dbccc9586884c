"""Reduced-size runs of the real-model interpretability recipes assert each recipe's effect."""

from __future__ import annotations

import json

import pytest

from lmlab.packaged import PACKAGED, packaged_path
from lmlab.runs import RunDir
from tests.conftest import data_file
from tests.run_events import assert_run_events

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def need(name: str) -> None:
    """Skip unless the packaged model `name` is installed."""
    if packaged_path(name) is None:
        pytest.skip(f"{name} is not installed ({PACKAGED[name].install})")


def _run(recipe, cfg, tmp_path) -> tuple[dict, str]:
    out = RunDir.create(recipe.__name__.rsplit(".", 1)[1], tmp_path)
    metrics = recipe.run(cfg, out)
    json.dumps(metrics, default=float)  # what `lmlab run` writes must serialize
    assert_run_events(out.path)
    report = out.file("report.md").read_text()
    for name in report.split("![](")[1:]:
        assert out.file(name.split(")")[0]).stat().st_size > 1000  # every linked plot exists
    return metrics, report


@pytest.mark.slow
def test_steering_vector_recovery_three_sentences(tmp_path):
    need("smollm2-135m-instruct")
    from lmlab.recipes import steering_vector_recovery as svr

    cfg = svr.Config(sentences=svr.SENTENCES[:3], steps=60)
    m, report = _run(svr, cfg, tmp_path)
    # measured: all three recovered exactly after 10, 24 and 14 Adam steps, norm(z) 30-51
    assert m["exact"] == 3 and m["corpus_bleu"] == 100.0, m
    assert all(s is not None and s <= 50 for s in m["steps_to_recover"]), m["steps_to_recover"]
    assert all(n > 5 for n in m["z_norms"]), m["z_norms"]
    assert "Exact greedy recovery: 3/3" in report


def test_sink_tokens_minilm_middle_layers(tmp_path, shared_data):
    data_file(shared_data, "sms_spam_collection.tsv")  # the recipe's corpus
    need("minilm-l6")
    from lmlab.recipes import sink_tokens

    cfg = sink_tokens.Config(models=("minilm-l6",), n_texts=20, k=5)
    m, report = _run(sink_tokens, cfg, tmp_path)
    share = m["minilm-l6"]["first_token_share_by_layer"]
    # measured on 10 SMS texts: 0.13, 0.47, 0.47, 0.39, 0.47, 0.35 ([CLS] is position 0)
    middle = share[1:5]
    assert sum(middle) / len(middle) > 0.4, share
    assert min(middle) > 0.3 and share[0] < 0.25, share
    assert m["minilm-l6"]["top_sink_tokens"][0][0] == "[CLS]"
    assert "## minilm-l6" in report


@pytest.mark.slow
def test_induction_heads_smollm2_known_layers(tmp_path):
    need("smollm2-135m-instruct")
    from lmlab.recipes import induction_heads

    cfg = induction_heads.Config(n=20, batch=2, top=8)
    m, report = _run(induction_heads, cfg, tmp_path)
    top = {(h["layer"], h["head"]): h["score"] for h in m["top_induction"]}
    # measured at this size: L18H6 0.75, L17H4 0.63, L17H5 0.58, L17H3 0.51, L18H7 0.42
    assert top.get((18, 6), 0) >= 0.6, top
    assert top.get((17, 4), 0) >= 0.45 and top.get((17, 5), 0) >= 0.45, top
    assert m["n_induction_heads_above_0.4"] >= 3
    first3 = [(h["layer"], h["head"]) for h in m["top_induction"][:3]]
    assert all(layer in (17, 18) for layer, _ in first3), first3
    assert "| 1 | L18H6 |" in report
    viewer = next(tmp_path.rglob("viewer.html"))  # the top heads' layers, a byte per weight
    assert 10_000 < viewer.stat().st_size < 1_000_000, viewer.stat().st_size


def test_logit_lens_answer_in_late_layers(tmp_path):
    need("smollm2-135m-instruct")
    from lmlab.recipes import logit_lens

    m, report = _run(logit_lens, logit_lens.Config(), tmp_path)
    probs = m["target_prob_by_layer"]  # entering L0 .. L29, then the final residual
    # measured: " Paris" is first on top at L28; p = 0.10, 0.46, 0.48, 0.70 over the last four
    assert m["target"] == " Paris"
    first = m["first_layer_with_target_on_top"]
    assert first is not None and first not in {f"L{i}" for i in range(20)}, first
    assert max(probs[:20]) < 0.01 and probs[-1] > 0.5, probs
    assert "Paris" in report
