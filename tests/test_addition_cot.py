"""addition-cot: the scratchpad format, the first-wrong-step finder, batches, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab import recipes
from lmlab.data.sources import make_data
from lmlab.data.tasks.addition_cot import (
    CHARS,
    AdditionCoTTask,
    FirstError,
    completion,
    decode,
    encode,
    first_wrong_step,
    parse_step,
    sample_operands,
    split_completion,
    steps,
    sum_from_steps,
)
from lmlab.data.tokens import IGNORE_INDEX
from lmlab.errors import InputError
from lmlab.recipes.addition_cot import roles, step_rows, teacher_forced_error
from lmlab.runs import RunDir
from lmlab.settings import from_toml
from tests.run_events import assert_run_events

PAIRS = [(0, 0), (5, 17), (123, 989), (999, 1), (1, 999), (500, 500), (99999, 99999), (40, 7)]


def test_documented_example():
    assert completion(123, 989) == "3+9+0=12;2+8+1=11;1+9+1=11;1112$"
    assert completion(123, 989, scratchpad=False) == "2111$"
    assert steps(7, 40) == ["7+0+0=07", "0+4+0=04"]  # the shorter operand's missing digit is 0


@pytest.mark.parametrize("a,b", PAIRS + [(i * 37 % 1000, i * 91 % 1000) for i in range(60)])
def test_scratchpad_round_trip(a, b):
    """Generate the steps of a+b, parse them back: digits, carries and the sum all rebuild."""
    text = completion(a, b)
    worked = split_completion(text)
    assert worked.done and worked.answer == str(a + b)
    parsed = [parse_step(s) for s in worked.steps]
    assert all(p is not None for p in parsed) and len(parsed) == max(len(str(a)), len(str(b)))
    carry = 0
    for x, y, c, t, s in parsed:
        assert c == carry and x + y + c == 10 * t + s
        carry = t
    assert sum_from_steps(parsed) == (a, b, a + b)
    assert split_completion(completion(a, b, False), scratchpad=False).answer == str(a + b)


def test_parse_step_rejects_malformed():
    assert parse_step("3+9+0=12") == (3, 9, 0, 1, 2)
    for bad in ("3+9=12", "3+9+2=14", "3+9+0=2", "3+9+0=123", "", "3+9+0=22"):
        assert parse_step(bad) is None, bad


@pytest.mark.parametrize(
    "text,want",
    [
        ("3+9+0=12;2+8+1=11;1+9+1=11;1112$", None),
        ("3+9+0=12;2+8+0=10;1+9+1=11;1112$", FirstError(1, "carry in")),
        ("3+9+0=12;2+7+1=10;1+9+1=11;1112$", FirstError(1, "operand digit")),
        ("3+9+0=12;2+8+1=11;1+9+1=10;1112$", FirstError(2, "column sum")),
        ("3+9+0=11;2+8+1=11;1+9+1=11;1112$", FirstError(0, "column sum")),
        ("3+9=12;2+8+1=11;1+9+1=11;1112$", FirstError(0, "malformed step")),
        ("3+9+0=12;2+8+1=11;1112$", FirstError(2, "missing step")),
        ("3+9+0=12;2+8+1=11;1+9+1=11;0+0+1=01;1112$", FirstError(3, "extra step")),
        ("3+9+0=12;2+8+1=11;1+9+1=11;1113$", FirstError(3, "answer")),
        ("3+9+0=12;2+8+1=11;1+9+1=11;1112", FirstError(3, "answer")),  # never ended
        ("", FirstError(0, "missing step")),
    ],
)
def test_first_wrong_step(text, want):
    assert first_wrong_step(text, 123, 989) == want


def test_batches_label_only_the_completion_and_skip_held_out_pairs():
    task = AdditionCoTTask(max_digits=2, n_test=50, n_val=20)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = task.get_batch("train", 64, g)
        for row, lab in zip(x.tolist(), y.tolist(), strict=True):
            text = decode(row)
            prompt = text.split("=", 1)[0] + "="
            a, b = map(int, prompt[:-1].split("+"))
            assert (a * task.limit + b) not in set(task.held_out.tolist())
            assert decode([v for v in lab if v != IGNORE_INDEX]) == completion(a, b)
            first = next(i for i, v in enumerate(lab) if v != IGNORE_INDEX)
            assert first == len(prompt) - 1  # the target at '=' is the first written token
    assert x.shape[1] <= task.block_size and task.vocab_size == len(CHARS)
    assert task.block_size + 1 == len("99999+99999=") + len(completion(99999, 99999))


def test_registered_as_a_training_task():
    source = make_data("task:addition-cot", 64, {"scratchpad": False, "n_test": 10, "n_val": 10})
    x, _ = source.data.get_batch("train", 4, torch.Generator().manual_seed(0))
    assert source.vocab_size == len(CHARS) and decode(x[0].tolist()).count("=") == 1


def test_operand_lengths_and_bad_range():
    a, b = sample_operands(2000, (1, 3), torch.Generator().manual_seed(0))
    lengths = torch.tensor([len(str(v)) for v in a.tolist() + b.tolist()])
    assert lengths.min() == 1 and lengths.max() == 3
    assert all(abs(float((lengths == k).float().mean()) - 1 / 3) < 0.05 for k in (1, 2, 3))
    a4, _ = sample_operands(100, (4, 4), torch.Generator().manual_seed(0))
    assert all(len(str(v)) == 4 for v in a4.tolist())
    with pytest.raises(InputError, match="lo <= hi"):
        sample_operands(3, (3, 1), torch.Generator())
    with pytest.raises(InputError, match=r"test_digits=\[4, 0\] must all be >= 1"):
        AdditionCoTTask(test_digits=(4, 0))


def test_roles_and_step_rows_align_with_tokens():
    prompt, out = "123+989=", completion(123, 989)
    names = roles(prompt, out)
    assert len(names) == len(prompt + out)
    assert names[:3] == ["a2", "a1", "a0"] and names[8:10] == ["s0.x", "s0.+"]
    (lo, hi), *_ = step_rows(prompt, out)
    assert (prompt + out)[lo] == "=" and (prompt + out)[lo + 1 : hi + 1] == "3+9+0=12;"


class Oracle(torch.nn.Module):
    """Predicts the next token of `text` at every position, except `wrong` positions (next-token
    index into text) where it predicts `;`."""

    def __init__(self, text: str, wrong: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.ids, self.wrong = encode(text), wrong
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        nxt = [*self.ids[1:], 0][: ids.shape[1]]
        nxt = [CHARS.index(";") if i + 1 in self.wrong else t for i, t in enumerate(nxt)]
        return torch.nn.functional.one_hot(torch.tensor([nxt]), len(CHARS)).float()


@pytest.mark.parametrize(
    "wrong,want",
    [
        ((), None),
        ((8,), FirstError(0, "operand digit")),  # '3', the first written token
        ((8 + 9 + 4, 8 + 9 + 7), FirstError(1, "carry in")),  # step 2's c (and later its t)
        ((8 + 9 + 5,), FirstError(1, "malformed step")),  # step 2's '='
        ((8 + 27 + 2,), FirstError(3, "answer")),
    ],
)
def test_teacher_forced_error_names_the_first_wrong_prediction(wrong, want):
    text = "123+989=" + completion(123, 989)
    assert text[8 + 9 + 4] == "1" and text[8 + 9 + 5] == "=" and text[8 + 27 + 2] == "1"
    assert teacher_forced_error(Oracle(text, wrong), 123, 989) == want


def test_tiny_run_writes_report_metrics_and_trace(tmp_path):
    mod = recipes.get("addition-cot")
    out = RunDir.create("addition-cot", tmp_path)
    cfg = from_toml(
        mod.Config,
        None,
        ["--train.max_steps=10", "--train.eval_interval=10", "--train.progress=false",
         "--train.model_overrides.d_model=32", "--n_test=10", "--n_val_check=5", "--n_trace=2"],
    )  # fmt: skip
    metrics = mod.run(cfg, out)
    assert_run_events(out.path)
    assert set(metrics["accuracy"]) == {
        f"{m}/{s}" for m in ("scratchpad", "direct") for s in ("1-3 digits", "4 digits", "5 digits")
    }
    assert all(0 <= v <= 1 for v in metrics["accuracy"].values())
    report = out.file("report.md").read_text()
    assert "| 4 digits |" in report and "first wrong" in report.lower()
    assert out.file("trace.png").stat().st_size > 5000
    assert json.dumps({k: v for k, v in metrics.items()}, default=float)
