"""Labeled text data sets from CSV, TSV or JSONL files, with label maps and (balanced) splits."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LabeledTexts:
    """Texts with integer labels; `names[i]` is the label string of class i."""

    texts: list[str]
    labels: list[int]
    names: list[str]
    duplicates_removed: int = 0  # exact-duplicate texts dropped from the source before splitting

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: list[int]) -> LabeledTexts:
        return LabeledTexts(
            [self.texts[i] for i in index],
            [self.labels[i] for i in index],
            self.names,
            self.duplicates_removed,
        )

    def counts(self) -> dict[str, int]:
        return {n: sum(1 for y in self.labels if y == i) for i, n in enumerate(self.names)}


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict[str, str]]:
    """Rows of a .csv/.tsv (header row unless `columns` names them) or .jsonl file as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found; pass a .csv, .tsv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix not in (".csv", ".tsv", ".txt"):
        raise ValueError(
            f"unsupported data file type {suffix!r} ({path}); use .csv, .tsv or .jsonl"
        )
    delim = "," if suffix == ".csv" else "\t"
    with open(path, encoding="utf-8", newline="") as f:
        if delim == "\t":  # SMS-style files: no quoting, text may contain quotes
            reader = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f, delimiter=delim)
        rows = [r for r in reader if r]
    if columns is None:
        columns, rows = rows[0], rows[1:]
    n = len(columns)
    return [dict(zip(columns, [*r[: n - 1], delim.join(r[n - 1 :])], strict=False)) for r in rows]


def load_labeled(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    columns: list[str] | None = None,
    label_map: dict[str, int] | None = None,
) -> LabeledTexts:
    """Read texts and labels; labels map to ids by `label_map` or in sorted order of their names.

    `columns` names the columns of a file without a header row (e.g. ["label", "text"]).
    """
    rows = read_rows(path, columns)
    if not rows:
        raise ValueError(f"{path} has no rows")
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise ValueError(
                f"column {col!r} not found in {path}; columns are {sorted(rows[0])}. Pass "
                "text_column=/label_column= (or columns=[...] for a file without a header row)"
            )
    raw = [str(r[label_column]) for r in rows]
    if label_map is None:
        label_map = {n: i for i, n in enumerate(sorted(set(raw)))}
    unknown = sorted(set(raw) - set(label_map))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} in {path} are not in label_map {label_map}")
    names = [n for n, _ in sorted(label_map.items(), key=lambda kv: kv[1])]
    return LabeledTexts([str(r[text_column]) for r in rows], [label_map[y] for y in raw], names)


def drop_duplicates(data: LabeledTexts) -> LabeledTexts:
    """Keep the first occurrence of every exact text; the count dropped is in `duplicates_removed`."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(data.texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    out = data.subset(keep)
    out.duplicates_removed = data.duplicates_removed + len(data) - len(keep)
    return out


def overlap(a: LabeledTexts, b: LabeledTexts) -> int:
    """How many texts of `b` also appear (exactly) in `a`."""
    seen = set(a.texts)
    return sum(1 for t in b.texts if t in seen)


def balance(data: LabeledTexts, seed: int = 0) -> LabeledTexts:
    """Undersample every class to the size of the smallest one (random rows, fixed seed)."""
    rng = random.Random(seed)
    by_class = [[i for i, y in enumerate(data.labels) if y == c] for c in range(len(data.names))]
    n = min(len(ix) for ix in by_class if ix)
    keep = sorted(i for ix in by_class for i in (rng.sample(ix, n) if ix else []))
    return data.subset(keep)


def split(
    data: LabeledTexts, fractions: tuple[float, ...] = (0.7, 0.1, 0.2), seed: int = 0
) -> list[LabeledTexts]:
    """Shuffle with a fixed seed and cut into parts of the given fractions (the last takes the rest)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f <= 0 for f in fractions):
        raise ValueError(f"split fractions {fractions} must be positive and sum to 1")
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for j, f in enumerate(fractions):
        end = len(order) if j == len(fractions) - 1 else start + int(f * len(order))
        parts.append(data.subset(order[start:end]))
        start = end
    return parts
