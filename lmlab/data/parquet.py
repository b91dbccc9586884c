"""Documents from a parquet shard (FineWeb style), read batch by batch in bounded memory.

pyarrow is optional: it is imported only when a `.parquet` input is read, and its absence is one
`DataError` naming the install command.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmlab.errors import DataError

BATCH_ROWS = 1024  # rows held in memory at a time (FineWeb documents average a few kB)
INSTALL = "pip install pyarrow (or pip install 'lmlab[data]')"


def _pyarrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or `DataError` saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading .parquet files needs pyarrow; {INSTALL}") from None
    return pa, pq


def _is_text(pa: Any, typ: Any) -> bool:
    kinds = ("is_string", "is_large_string", "is_string_view")
    return any(getattr(pa.types, k, lambda _: False)(typ) for k in kinds)


def parquet_documents(
    path: str | Path, text_field: str = "text", batch_rows: int | None = None
) -> Iterator[str]:
    """The non-blank `text_field` values of a parquet file, `batch_rows` rows in memory at a time."""
    pa, pq = _pyarrow()
    path = Path(path)
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path} is not a readable parquet file ({e}); pass parquet shards, .jsonl or .txt files"
        ) from None
    schema = f.schema_arrow
    if text_field not in schema.names:
        raise DataError(
            f'{path} has no "{text_field}" column (columns: {", ".join(schema.names)}); '
            "pass --text-field with the column that holds the text"
        )
    typ = schema.field(text_field).type
    if not _is_text(pa, typ):
        raise DataError(
            f'{path}: column "{text_field}" is {typ}, not text; pass --text-field with the column '
            "that holds the text"
        )
    row = 0
    try:
        for batch in f.iter_batches(batch_size=batch_rows or BATCH_ROWS, columns=[text_field]):
            texts = batch.column(0).to_pylist()
            row += len(texts)
            for text in texts:
                if text is not None and text.strip():
                    yield text
            del texts
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path} is damaged near row {row} ({e}); download the shard again"
        ) from None
