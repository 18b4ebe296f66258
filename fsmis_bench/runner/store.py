"""Results store: ``<results>/results.csv``, one row per (job, organ), safe under concurrent writers and kills.

A job's rows are written under a file lock by writing the whole table to a temporary file and renaming it
over the old one, so a reader never sees a partial row and a writer killed mid-write leaves the previous
table intact. Recording a job replaces any earlier rows of the same key, so a job appears exactly once: its
latest attempt. A failed job is one row with an empty ``organ`` and the error.
"""

from __future__ import annotations

import csv
import io
import math
import os
import secrets
from pathlib import Path
from typing import Any

from filelock import FileLock

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.errors import DataError

COLUMNS = (
    "key", "status", "method", "dataset", "source_dataset", "setting", "fold", "shots", "seed", "profile", "organ", "dice",
    "hd95", "valid_cases", "reference", "protocol", "budget", "fingerprint", "seconds", "run_dir", "error",
    "determinism", "environment",
)  # fmt: skip
#: Columns added after the first stores were written: rows of an older store read them as empty.
LATER_COLUMNS = ("determinism", "environment")
STORE_FILE = "results.csv"
_ORGAN_RANK = {organ: rank for rank, organ in enumerate(ORGANS)}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _order(row: dict[str, str]) -> tuple[str, int]:
    return row["key"], _ORGAN_RANK.get(row["organ"], -1)


class ResultsStore:
    """The result rows of every job run into one results folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / STORE_FILE
        self.lock = FileLock(str(self.path) + ".lock")  # also held by job claims (claims.py)

    def record(self, key: str, rows: list[dict[str, Any]]) -> None:
        """Replace the rows of job ``key`` by ``rows`` (all or nothing)."""
        bad = {column for row in rows for column in row} - set(COLUMNS)
        if bad or any(row.get("key") != key for row in rows):
            raise ValueError(f"rows of {key}: unknown columns {sorted(bad)} or another job's key")
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            kept = [row for row in self.rows() if row["key"] != key]
            new = [{column: _cell(row.get(column)) for column in COLUMNS} for row in rows]
            self._replace(sorted(kept + new, key=_order))

    def rows(self) -> list[dict[str, str]]:
        """Every row, as strings (a consistent snapshot: the file is only ever replaced whole).

        A file that is not this table (not text, a column missing or unknown, a row with more or fewer fields
        than the header) is a DataError naming the file and line: no row is dropped, cut or padded.
        """
        if not self.path.exists():
            return []
        text = _read_text(self.path)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader, [])
            _check_header(self.path, header)
            rows = []
            for fields in reader:
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        f"{self.path}, line {reader.line_num}: {len(fields)} fields where the header has "
                        f"{len(header)} (a cut or hand-edited row?)"
                    )
                rows.append(dict(zip(header, fields)))
        except csv.Error as exc:
            raise DataError(f"{self.path}, line {reader.line_num}: not CSV ({exc})") from None
        return [{column: "" for column in LATER_COLUMNS} | row for row in rows]

    def state(self) -> dict[str, tuple[str, str]]:
        """Job key -> (status, fingerprint) of its latest recorded attempt."""
        return {row["key"]: (row["status"], row["fingerprint"]) for row in self.rows()}

    def _replace(self, rows: list[dict[str, str]]) -> None:
        for stale in self.root.glob(f".{STORE_FILE}.*.tmp"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, buffer.getvalue().encode())


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a results table (binary: byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(f"{path}: not a results table (binary: NUL byte at offset {nul})")
    return text


def _check_header(path: Path, header: list[str]) -> None:
    """The header names every column but those added later (older stores lack them), and no other."""
    if not header:
        raise DataError(f"{path}: not a results table (empty)")
    missing = [c for c in COLUMNS if c not in header and c not in LATER_COLUMNS]
    unknown = [c for c in header if c not in COLUMNS]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if not (missing or unknown or repeated):
        return
    problems = [
        f"{label} column(s) {', '.join(names)}"
        for label, names in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
        if names
    ]
    raise DataError(f"{path}: not a results table ({'; '.join(problems)})")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: write a temporary file beside it (mode from the umask), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
