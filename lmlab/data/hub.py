"""Fetch a hub dataset's shards (e.g. FineWeb-Edu's `sample-10BT`) for `lmlab.data.prepare`.

Lists the dataset repository's files, keeps those under the subset's folder that match a pattern,
and downloads the first `max_shards` of them (sorted by path) with `hf_hub_download`, which reuses
the hub cache. It needs the network: with `HF_HUB_OFFLINE` set, or when the hub cannot be reached,
it is one `DataError` saying so and how to pass local files instead.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from lmlab.errors import DataError, InputError

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"


def _offline() -> bool:
    """`HF_HUB_OFFLINE` (read now, not at import time) is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _prefixes(subset: str | None) -> list[str]:
    """Folders a subset name may mean: itself, and a config name's `-` as `/` (`sample-10BT`
    is the folder `sample/10BT/` in FineWeb and FineWeb-Edu)."""
    if not subset:
        return [""]
    s = subset.strip("/")
    return list(dict.fromkeys([s + "/", s.replace("-", "/") + "/"]))


def select_shards(
    files: list[str], subset: str | None = None, pattern: str = "*.parquet", max_shards: int = 1
) -> list[str]:
    """The first `max_shards` (sorted) of `files` under the subset's folder whose name matches
    `pattern`; `InputError` naming what exists when none does."""
    if max_shards < 1:
        raise InputError(f"--max-shards {max_shards} must be >= 1")
    prefixes = _prefixes(subset)
    hits = sorted(
        f
        for f in files
        if any(f.startswith(p) for p in prefixes) and fnmatch.fnmatch(f.rsplit("/", 1)[-1], pattern)
    )
    if not hits:
        folders = sorted(
            {f.rsplit("/", 1)[0] for f in files if "/" in f and f.endswith(pattern.lstrip("*"))}
        )
        shown = ", ".join(folders[:8]) + (" ..." if len(folders) > 8 else "")
        raise InputError(
            f"no file matching {pattern!r} under {' or '.join(repr(p) for p in prefixes)}; "
            f"folders with such files: {shown or 'none'}; pass --hub-subset with one of them"
        )
    return hits[:max_shards]


def _local_hint(repo_id: str, subset: str | None) -> str:
    where = _prefixes(subset)[-1] or ""
    return (
        f"download shards on a machine with internet (`hf download {repo_id} --repo-type dataset "
        f"--include '{where}*.parquet'`) and pass their local paths to prepare instead"
    )


def fetch_shards(
    repo_id: str = FINEWEB_EDU,
    subset: str | None = "sample-10BT",
    pattern: str = "*.parquet",
    max_shards: int = 1,
    revision: str | None = None,
) -> list[Path]:
    """Local paths of the first `max_shards` matching shards of hub dataset `repo_id`."""
    if _offline():
        raise DataError(
            f"fetching {repo_id} shards needs the network and HF_HUB_OFFLINE is set; "
            + _local_hint(repo_id, subset)
        )
    import huggingface_hub as hh
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        files = hh.HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except RepositoryNotFoundError:
        raise DataError(
            f"{repo_id!r} is not a hub dataset (or it is private: `hf auth login`); check the id"
        ) from None
    except Exception as e:  # connection, DNS, proxy, HTTP: all mean "cannot reach the hub"
        raise DataError(
            f"cannot list {repo_id} on the hub ({type(e).__name__}: {str(e)[:120]}); it needs the "
            "network: " + _local_hint(repo_id, subset)
        ) from None
    paths = []
    for name in select_shards(list(files), subset, pattern, max_shards):
        try:
            local = hh.hf_hub_download(repo_id, name, repo_type="dataset", revision=revision)
        except Exception as e:
            raise DataError(
                f"cannot download {repo_id}/{name} ({type(e).__name__}: {str(e)[:120]}); "
                + _local_hint(repo_id, subset)
            ) from None
        paths.append(Path(local))
    return paths
