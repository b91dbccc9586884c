"""Corpus sources for `lmlab.data.prepare`: parquet shards, JSONL with a chosen text field, bounded
memory on large inputs, and fetching hub dataset shards (mocked: tests run offline)."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import lmlab.data.parquet as parquet_mod
import lmlab.data.prepare as prep
from lmlab.data.hub import fetch_shards, select_shards
from lmlab.errors import DataError, InputError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _docs(n: int, size: int = 40) -> list[str]:
    return [f"doc {i}: " + "abcdefghij"[i % 10] * (size + i % 7) + "\n" for i in range(n)]


def _write_parquet(path: Path, texts: list, row_group: int = 16, **cols) -> Path:
    pq.write_table(pa.table({"text": texts, **cols}), path, row_group_size=row_group)
    return path


def _write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def _expected(texts: list[str], val_fraction: float) -> dict[str, list[int]]:
    """What the byte tokenizer must write: EOS + UTF-8 bytes per document, split by hash."""
    out: dict[str, list[int]] = {"train": [], "val": []}
    for t in texts:
        if t.strip():
            out["val" if prep.is_val(t, val_fraction) else "train"] += [256, *t.encode()]
    return out


def _read(out: Path, i: int = 0) -> dict[str, list[int]]:
    return {
        s: np.fromfile(out / f"{s}_{i:06d}.bin", dtype=np.uint16).tolist() for s in ("train", "val")
    }


def test_parquet_and_jsonl_shards_equal_a_direct_tokenization(tmp_path, monkeypatch):
    texts = [*_docs(120), "   ", "ünïcødé ✓ text\n"]
    monkeypatch.setattr(parquet_mod, "BATCH_ROWS", 7)  # many batches across row groups of 16
    monkeypatch.setattr(prep, "ENCODE_CHARS", 300)  # many tokenize-and-append rounds
    pq_in = _write_parquet(
        tmp_path / "a.parquet", [*texts, None], score=list(range(len(texts) + 1))
    )
    js_in = _write_jsonl(tmp_path / "b.jsonl", texts, field="content")
    want = _expected(texts, 0.2)
    assert want["train"] and want["val"]

    s1 = prep.prepare([pq_in], tmp_path / "p", tokenizer="bytes", val_fraction=0.2)
    assert _read(tmp_path / "p") == want
    assert s1["tokens"] == len(want["train"]) + len(want["val"])
    s2 = prep.prepare(
        [js_in], tmp_path / "j", tokenizer="bytes", val_fraction=0.2, text_field="content"
    )
    assert _read(tmp_path / "j") == want and s2 == s1
    meta = json.loads((tmp_path / "j" / "meta.json").read_text())
    assert meta["text_field"] == "content"
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".lmlab-tmp")]


def test_meta_without_text_field_still_resumes(tmp_path):
    """Folders prepared before `text_field` existed continue (default "text"), not refused."""
    src = _write_jsonl(tmp_path / "a.jsonl", _docs(40))
    prep.prepare([src], tmp_path / "o", tokenizer="bytes", val_fraction=0.3)
    meta_p = tmp_path / "o" / "meta.json"
    meta = json.loads(meta_p.read_text())
    del meta["text_field"]
    meta_p.write_text(json.dumps(meta))
    assert (
        prep.prepare([src], tmp_path / "o", tokenizer="bytes", val_fraction=0.3)["processed"] == 0
    )


def _one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_parquet_inputs_are_one_line_errors_before_writing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    no_col = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), no_col)
    with pytest.raises(DataError) as e:
        prep.prepare([no_col], out, tokenizer="bytes")
    assert 'no "text" column (columns: body, n)' in _one_line_error(e)
    assert "--text-field" in str(e.value)

    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    with pytest.raises(DataError, match=r'column "text" is int64, not text'):
        prep.prepare([ints], out, tokenizer="bytes")

    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(DataError, match=r"junk.parquet is not a readable parquet file"):
        prep.prepare([junk], out, tokenizer="bytes")

    js = _write_jsonl(tmp_path / "a.jsonl", ["hello"])
    with pytest.raises(DataError, match=r'a.jsonl:1 has no "body" field \(keys text, id\)'):
        prep.prepare([js], out, tokenizer="bytes", text_field="body")

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    good = tmp_path / "good.parquet"
    good.write_bytes(b"x")
    with pytest.raises(DataError) as e:
        prep.prepare([good], out, tokenizer="bytes")
    assert "needs pyarrow; pip install pyarrow" in _one_line_error(e)
    assert not out.exists()


# A .jsonl and a .parquet of ~6 MB each: the byte tokenizer's ids for all of it as Python lists
# would take ~50 MB; batches of 64 kB characters keep the peak of Python allocations far lower.
N_DOCS, DOC_CHARS, BOUND = 3000, 2000, 4_000_000


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_large_input_is_streamed_in_bounded_memory(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(prep, "ENCODE_CHARS", 64_000)
    monkeypatch.setattr(parquet_mod, "BATCH_ROWS", 32)
    texts = [f"{i} " + "xyzw" * (DOC_CHARS // 4) for i in range(N_DOCS)]
    if kind == "jsonl":
        src = _write_jsonl(tmp_path / "big.jsonl", texts)
    else:
        src = _write_parquet(tmp_path / "big.parquet", texts, row_group=64)
    del texts
    tracemalloc.start()
    try:
        stats = prep.prepare([src], tmp_path / "out", tokenizer="bytes", val_fraction=0.05)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["tokens"] > 0.99 * N_DOCS * DOC_CHARS
    print(f"{kind}: peak {peak / 1e6:.2f} MB of Python allocations")
    assert N_DOCS * DOC_CHARS > BOUND  # the text itself would not fit the bound
    assert peak < BOUND, f"peak {peak / 1e6:.1f} MB of Python allocations (bound {BOUND / 1e6} MB)"


# ---------------------------------------------------------------------- hub shards (mocked)
FILES = [
    ".gitattributes",
    "README.md",
    "data/CC-MAIN-2024-10/000_00000.parquet",
    "sample/100BT/000_00000.parquet",
    "sample/10BT/002_00000.parquet",
    "sample/10BT/000_00000.parquet",
    "sample/10BT/001_00000.parquet",
    "sample/10BT/notes.txt",
]


def test_select_shards_picks_the_subset_folder_sorted_and_limited():
    assert select_shards(FILES, "sample-10BT", max_shards=2) == [
        "sample/10BT/000_00000.parquet",
        "sample/10BT/001_00000.parquet",
    ]
    assert select_shards(FILES, "sample/10BT/", max_shards=9) == [
        f"sample/10BT/00{i}_00000.parquet" for i in range(3)
    ]
    assert select_shards(FILES, None, max_shards=1) == ["data/CC-MAIN-2024-10/000_00000.parquet"]
    with pytest.raises(
        InputError, match=r"folders with such files: data/CC-MAIN-2024-10, sample/100BT"
    ):
        select_shards(FILES, "sample-350BT")
    with pytest.raises(InputError, match="--max-shards 0 must be >= 1"):
        select_shards(FILES, "sample-10BT", max_shards=0)


def test_fetch_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        fetch_shards("HuggingFaceFW/fineweb-edu", "sample-10BT")
    msg = _one_line_error(e)
    assert "needs the network and HF_HUB_OFFLINE is set" in msg
    assert "--include 'sample/10BT/*.parquet'" in msg and "pass their local paths" in msg


def test_fetch_unreachable_hub_is_one_clear_error(monkeypatch):
    import huggingface_hub

    class NoNet:
        def list_repo_files(self, *a, **k):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoNet)
    with pytest.raises(DataError) as e:
        fetch_shards("HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert "cannot list HuggingFaceFW/fineweb-edu on the hub (ConnectionError" in _one_line_error(e)


def test_prepare_cli_fetches_hub_shards_then_prepares_them(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls: list[tuple] = []

    class Api:
        def list_repo_files(self, repo_id, repo_type=None, revision=None):
            calls.append(("list", repo_id, repo_type))
            return FILES

    def download(repo_id, filename, repo_type=None, revision=None):
        calls.append(("get", filename, repo_type))
        return str(_write_parquet(tmp_path / filename.replace("/", "_"), _docs(30)))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    out = tmp_path / "fw"
    argv = ["--hub", "HuggingFaceFW/fineweb-edu", "--hub-subset", "sample-10BT", "--max-shards",
            "2", "--out", str(out), "--tokenizer", "bytes", "--workers", "1", "--val-fraction", "0.3"]  # fmt: skip
    assert prep.main(argv) == 0, capsys.readouterr().err
    assert calls == [
        ("list", "HuggingFaceFW/fineweb-edu", "dataset"),
        ("get", "sample/10BT/000_00000.parquet", "dataset"),
        ("get", "sample/10BT/001_00000.parquet", "dataset"),
    ]
    assert sorted(p.name for p in out.glob("*.bin")) == [
        "train_000000.bin", "train_000001.bin", "val_000000.bin", "val_000001.bin"
    ]  # fmt: skip
    assert _read(out, 1) == _expected(_docs(30), 0.3)
