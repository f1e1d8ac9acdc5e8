"""Dataset version profiles: schema and per-column statistics of tabular files, computed by a
background job after a version is created (`actors/profile_jobs.py` runs the jobs).

CSV, JSON lines and Parquet files are copied from storage to a temporary directory (streamed)
and read with pandas in a worker thread, at most `MAX_ROWS` rows per file. Image, text and
"other" datasets are not profiled: their profile succeeds with a note saying so. A file that
cannot be read fails the profile with a message naming it; it never fails the job runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# pyarrow ships no type information; setup.cfg's mypy section does not list it yet
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.storage.base import Storage, StorageError

MAX_ROWS = 1_000_000
PROFILED_TYPES = ("tabular", "time-series")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
TOP_VALUES = 10
HISTOGRAM_BINS = 10
CATEGORICAL_MAX = 50  # at most this many distinct values (and each seen twice on average)
ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?"
)
ID_SUFFIXES = ("_id", "-id", " id", "_uuid", "-uuid", "_key")


class ProfileError(Exception):
    """A file cannot be profiled; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a profiling job writes back to the version."""

    status: str
    profile: dict[str, Any] | None
    error: str | None
    row_count: int | None


async def profile_files(
    storage: Storage, dataset_type: str, files: Sequence[dict[str, Any]]
) -> Outcome:
    """Profile every file of a version; the version fails when any file does."""
    if dataset_type not in PROFILED_TYPES:
        note = (
            f"{dataset_type} datasets are not profiled; profiles cover tabular and time-series "
            "data in CSV, JSON lines and Parquet files"
        )
        listed = [{"name": f["name"], "size_bytes": f["size_bytes"]} for f in files]
        return Outcome("succeeded", {"supported": False, "note": note, "files": listed}, None, None)
    # Made in the loop, not a thread: a cancel landing mid-call would lose the directory.
    workdir = Path(tempfile.mkdtemp(prefix="stepwell-profile-"))
    try:
        results = [await _profile_file(storage, workdir, f) for f in files]
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    errors = [f"{r['name']}: {r['error']}" for r in results if "error" in r]
    rows = sum(r.get("row_count", 0) for r in results)
    sampled = any(r.get("sampled", False) for r in results)
    profile = {"supported": True, "row_count": rows, "sampled": sampled, "files": results}
    if errors:
        return Outcome("failed", profile, "; ".join(errors), None)
    return Outcome("succeeded", profile, None, rows)


async def _profile_file(storage: Storage, workdir: Path, file: dict[str, Any]) -> dict[str, Any]:
    path = workdir / file["name"]  # names were checked safe when uploaded
    try:
        sha256 = await _download(storage, file["storage_key"], path)
        if sha256 != file["sha256"]:
            raise ProfileError("the stored file changed after the version was made")
        profile = await asyncio.to_thread(profile_table, path)
    except ProfileError as exc:
        return {"name": file["name"], "error": str(exc)}
    return {"name": file["name"], **profile}


async def _download(storage: Storage, key: str, path: Path) -> str:
    """Copy an object to `path` chunk by chunk; returns its SHA-256."""
    digest = hashlib.sha256()
    await asyncio.to_thread(path.write_bytes, b"")  # an empty object is an empty file
    try:
        async for chunk in storage.read(key):
            digest.update(chunk)
            # Each chunk opens, appends and closes in the thread: a job cancelled at shutdown
            # leaves no open file behind, even when the cancel lands mid-write.
            await asyncio.to_thread(_append, path, chunk)
    except StorageError as exc:
        raise ProfileError(f"cannot read the file from storage: {exc}") from exc
    return digest.hexdigest()


def _append(path: Path, chunk: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(chunk)


def detect_format(path: Path) -> str:
    """csv, jsonl or parquet: by extension, else by the first bytes."""
    known = FORMATS.get(path.suffix.lower())
    if known:
        return known
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if b"\0" in head:
        raise ProfileError("format not supported: expected CSV, JSON lines or Parquet")
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def profile_table(path: Path) -> dict[str, Any]:
    """The profile of one tabular file (blocking: run it in a thread)."""
    fmt = detect_format(path)
    try:
        frame, total = _read(fmt, path, MAX_ROWS)
    except (ValueError, pa.ArrowException) as exc:
        raise ProfileError(_explain(fmt, exc)) from exc
    frame = _typed(frame)
    columns = [_describe(str(name), frame[name]) for name in frame.columns]
    return {
        "format": fmt,
        "row_count": total,
        "profiled_rows": len(frame),
        "sampled": total > len(frame),
        "column_count": len(columns),
        "columns": columns,
        "warnings": [w for c in columns for w in _warnings(c, len(frame))],
    }


def _read(fmt: str, path: Path, limit: int) -> tuple[pd.DataFrame, int]:
    """At most `limit` rows of the file, and how many rows it has in all."""
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        batches = []
        taken = 0
        for batch in parquet.iter_batches(batch_size=65_536):
            batches.append(batch)
            taken += batch.num_rows
            if taken >= limit:
                break
        table = pa.Table.from_batches(batches, schema=parquet.schema_arrow).slice(0, limit)
        return table.to_pandas(types_mapper=_nullable), parquet.metadata.num_rows
    # Nullable dtypes keep an integer column with gaps integer; dtype=False keeps pandas from
    # guessing dates from column names (strings that are ISO dates are recognised later).
    if fmt == "jsonl":
        frame = pd.read_json(
            path, lines=True, nrows=limit + 1, dtype=False, dtype_backend="numpy_nullable"
        )
    else:
        frame = pd.read_csv(path, nrows=limit + 1, dtype_backend="numpy_nullable", low_memory=False)
    if len(frame) <= limit:
        return frame, len(frame)
    return frame.iloc[:limit], _count_rows(fmt, path)


def _nullable(arrow_type: Any) -> Any:
    """The pandas nullable dtype for an Arrow type (None: pandas' default)."""
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_floating(arrow_type):
        return pd.Float64Dtype()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None


def _count_rows(fmt: str, path: Path) -> int:
    """Every row of a file too long to profile whole, counted without keeping it."""
    if fmt == "jsonl":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    chunks = pd.read_csv(path, usecols=[0], chunksize=MAX_ROWS)
    return sum(len(chunk) for chunk in chunks)


def _explain(fmt: str, exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"not UTF-8 text, so not readable as {fmt.upper()} ({exc.reason} at byte {exc.start})"
        )
    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty"
    if isinstance(exc, pd.errors.ParserError):
        return f"malformed CSV: {exc}".replace("Error tokenizing data. C error: ", "")
    names = {"csv": "CSV", "jsonl": "JSON lines", "parquet": "Parquet"}
    return f"not readable as {names[fmt]}: {exc}"


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """ISO date strings as datetimes, nested or mixed JSON values as text."""
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object:
            frame[name] = column.map(_text, na_action="ignore").astype("string")
        elif pd.api.types.is_string_dtype(column.dtype):
            frame[name] = _maybe_datetime(column)
    return frame


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _maybe_datetime(column: pd.Series[Any]) -> pd.Series[Any]:
    values = column.dropna()
    if values.empty or not all(ISO_DATETIME.fullmatch(str(v)) for v in values.head(100)):
        return column
    try:
        parsed = pd.to_datetime(column, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):  # mixed time zones, out-of-range years
        return column
    return parsed if int(parsed.notna().sum()) == len(values) else column


def _kind(column: pd.Series[Any], distinct: int, present: int) -> str:
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.CategoricalDtype) or (
        distinct <= CATEGORICAL_MAX and distinct * 2 <= present
    ):
        return "categorical"
    return "string"


def _describe(name: str, column: pd.Series[Any]) -> dict[str, Any]:
    """Type, nulls, distinct values and the statistics that suit the column's type."""
    rows = len(column)
    values = column.dropna()
    nulls = rows - len(values)
    distinct = int(values.nunique())
    kind = _kind(column, distinct, len(values))
    described: dict[str, Any] = {
        "name": name,
        "type": kind,
        "dtype": str(column.dtype),
        "nullable": nulls > 0,
        "null_count": nulls,
        "null_fraction": round(nulls / rows, 6) if rows else 0.0,
        "distinct_count": distinct,
    }
    if kind in ("integer", "float"):
        described |= _numeric(values)
    elif kind == "datetime":
        described |= {"min": _plain(values.min()), "max": _plain(values.max())}
    else:
        counts = values.value_counts().head(TOP_VALUES)
        described["top_values"] = [
            {"value": _plain(value), "count": int(count)} for value, count in counts.items()
        ]
    return described


def _numeric(values: pd.Series[Any]) -> dict[str, Any]:
    numbers = values.to_numpy(dtype="float64")
    finite = numbers[np.isfinite(numbers)]  # a histogram needs a finite range
    histogram = None
    if finite.size:
        counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
        histogram = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    with np.errstate(invalid="ignore", over="ignore"):  # infinities give NaN, shown as null
        mean = numbers.mean() if numbers.size else None
        std = numbers.std(ddof=1) if numbers.size > 1 else None
    return {
        "min": _plain(values.min()) if len(values) else None,
        "max": _plain(values.max()) if len(values) else None,
        "mean": _plain(mean),
        "std": _plain(std),
        "histogram": histogram,
    }


def _plain(value: Any) -> Any:
    """A JSON value: numpy scalars unwrapped, NaN and infinities as null, times in ISO 8601."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _id_like(name: str) -> bool:
    lower = name.lower()
    camel = re.search(r"[a-z](Id|ID|Uuid|UUID)$", name) is not None
    return lower in ("id", "uuid", "guid", "key") or lower.endswith(ID_SUFFIXES) or camel


def _warnings(column: dict[str, Any], rows: int) -> list[dict[str, str]]:
    """Constant columns, columns mostly empty, columns that look like row identifiers."""
    name = column["name"]
    found = []
    if rows and column["distinct_count"] <= 1:
        found.append(("constant", f"column {name!r} holds a single value"))
    if column["null_fraction"] > 0.5:
        share = round(column["null_fraction"] * 100)
        found.append(("high_null_share", f"column {name!r} is {share}% empty"))
    unique = rows > 1 and column["null_count"] == 0 and column["distinct_count"] == rows
    if unique and (_id_like(name) or column["type"] in ("integer", "string")):
        found.append(("likely_id", f"column {name!r} is unique in every row: likely an id"))
    return [{"column": name, "code": code, "message": message} for code, message in found]
