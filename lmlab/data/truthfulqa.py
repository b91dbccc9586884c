"""TruthfulQA (Lin et al. 2021) from its CSV: questions with correct and incorrect answers.

Columns used: Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers; the two
answer lists are `; `-separated. Folds for cross-validation are made of whole questions, so no
question's answers sit on both sides of a split.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import DataError, InputError, MissingFileError
from lmlab.paths import data_dir

FILE_NAME = "TruthfulQA.csv"
COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers")


@dataclass(frozen=True)
class TQAQuestion:
    """One question: the best answer is `correct[0]`."""

    question: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]
    category: str = ""
    kind: str = ""  # Adversarial / Non-Adversarial

    @property
    def best(self) -> str:
        """The answer the data set marks as best."""
        return self.correct[0]


def split_answers(cell: str) -> list[str]:
    """`"a; b;  c"` -> `["a", "b", "c"]` (blank pieces dropped, whitespace stripped)."""
    return [a.strip() for a in cell.split(";") if a.strip()]


def default_path() -> Path:
    """`TruthfulQA.csv` in the shared data folder (`lmlab.paths.data_dir()`)."""
    return data_dir() / FILE_NAME


def read_truthfulqa(path: str | Path | None = None) -> list[TQAQuestion]:
    """All questions of the CSV at `path` (default: the shared data folder), in file order."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found; put TruthfulQA.csv (github.com/sylinrl/TruthfulQA) there "
            "or set LMLAB_DATA to the folder holding it"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; the header needs "
                f"{', '.join(COLUMNS)}"
            )
        out = [_question(path, i + 2, r) for i, r in enumerate(reader)]
    if not out:
        raise DataError(f"{path} holds no questions; give the TruthfulQA CSV with its rows")
    return out


def _question(path: Path, line: int, row: dict[str, str]) -> TQAQuestion:
    best = row["Best Answer"].strip()
    correct = split_answers(row["Correct Answers"])
    incorrect = split_answers(row["Incorrect Answers"])
    if not row["Question"].strip() or not (best or correct) or not incorrect:
        raise DataError(
            f"{path} line {line}: needs a question, a correct (or best) answer and an incorrect "
            "answer; fill the row or remove it"
        )
    correct = [best or correct[0], *(a for a in correct if a != (best or correct[0]))]
    return TQAQuestion(
        row["Question"].strip(),
        tuple(correct),
        tuple(incorrect),
        row["Category"].strip(),
        row["Type"].strip(),
    )


def question_folds(n_questions: int, n_folds: int = 2, seed: int = 0) -> list[list[int]]:
    """Question indices shuffled and dealt into `n_folds` disjoint folds of near-equal size."""
    if n_folds < 2 or n_questions < n_folds:
        raise InputError(
            f"{n_questions} questions cannot make {n_folds} folds; need n_folds >= 2 and at "
            "least one question per fold"
        )
    idx = list(range(n_questions))
    random.Random(seed).shuffle(idx)
    return [sorted(idx[f::n_folds]) for f in range(n_folds)]
