"""HellaSwag's validation split: a local copy of the official jsonl, downloaded once when online.

`hellaswag_path()` returns `data_dir()/hellaswag_val.jsonl` (the official file's name: copy it there
to work offline). When it is missing and the network is allowed, the validation split of the hub
dataset `Rowan/hellaswag` (a parquet or jsonl file on its main branch, else the hub's parquet
conversion) is fetched with `huggingface_hub` and written there as the official jsonl records. With
`HF_HUB_OFFLINE` set, or when the hub cannot be reached, it is one `DataError` saying to go online
or pass the file with `--data PATH`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmlab.errors import DataError
from lmlab.paths import data_dir
from lmlab.runs import atomic_write

HUB_DATASET = "Rowan/hellaswag"
FILE_NAME = "hellaswag_val.jsonl"
PARQUET_BRANCH = "refs/convert/parquet"  # the hub's automatic parquet export of every dataset
OFFICIAL = "https://github.com/rowanz/hellaswag/raw/master/data/hellaswag_val.jsonl"


def _offline() -> bool:
    """`HF_HUB_OFFLINE` (read now, not at import time) is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _fix(why: str) -> str:
    return (
        f"HellaSwag is not at {data_dir() / FILE_NAME} and {why}: it needs the network (to fetch "
        f"{HUB_DATASET} from the hub), or pass --data PATH with the official {FILE_NAME} "
        f"({OFFICIAL})"
    )


def hellaswag_path(download: bool = True) -> Path:
    """The local validation jsonl, fetched from the hub into the data dir when it is missing."""
    path = data_dir() / FILE_NAME
    if path.is_file():
        return path
    if not download:
        raise DataError(_fix("downloading is off"))
    if _offline():
        raise DataError(_fix("HF_HUB_OFFLINE is set"))
    records = _fetch_validation()
    if not records:
        raise DataError(f"{HUB_DATASET}'s validation file has no rows; {_fix('it is empty')}")
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def pick_validation_files(files: list[str]) -> list[str]:
    """The validation split's parquet or jsonl files (sorted) among a dataset repository's files."""
    return sorted(
        f
        for f in files
        if f.endswith((".parquet", ".jsonl"))
        and ("val" in f.rsplit("/", 1)[-1] or "/validation/" in f"/{f}")
    )


def _fetch_validation() -> list[dict[str, Any]]:
    """The validation records of `HUB_DATASET` as dicts with the official jsonl fields."""
    import huggingface_hub as hh

    try:
        for revision in (None, PARQUET_BRANCH):
            files = hh.HfApi().list_repo_files(HUB_DATASET, repo_type="dataset", revision=revision)
            names = pick_validation_files(list(files))
            if names:
                return [
                    record
                    for name in names
                    for record in read_records(
                        Path(
                            hh.hf_hub_download(
                                HUB_DATASET, name, repo_type="dataset", revision=revision
                            )
                        )
                    )
                ]
    except DataError:
        raise
    except Exception as e:  # connection, DNS, proxy, HTTP, a missing branch: cannot get it
        raise DataError(_fix(f"the hub gave {type(e).__name__}: {str(e)[:100]}")) from None
    raise DataError(_fix(f"{HUB_DATASET} lists no validation parquet/jsonl file"))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a HellaSwag parquet or jsonl file as dicts (parquet needs pyarrow)."""
    if path.suffix != ".parquet":
        return [
            json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()
        ]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"reading {path.name} needs pyarrow: pip install pyarrow, or pass --data PATH with "
            f"the official {FILE_NAME}"
        ) from None
    return pq.read_table(path).to_pylist()
