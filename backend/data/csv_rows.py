"""Reading label CSVs as text with the true file line of every row, and errors that name it.

Every label format and the splits file are read through :func:`read_csv_rows`, so a bad cell is
reported as ``<file>, line <n>, field '<column>': ...`` (:class:`backend.errors.DataFormatError`)
whichever reader found it: :func:`raise_for_rows` turns "these rows are bad" into that message.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from backend.errors import DataFormatError

#: Name of the raw-row column holding each row's 1-based file line (the header is line 1).
LINE = "_line"


def read_header(path: str | Path) -> list[str] | None:
    """The stripped column names of a CSV's first line, or None (not a file, empty, unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    text = head.decode("utf-8-sig", errors="replace").lstrip("\r\n")
    if not text.strip():
        return None
    try:
        row = next(csv.reader(io.StringIO(text, newline="")))
    except (csv.Error, StopIteration):
        return None
    return [c.strip() for c in row]


def read_text(path: Path) -> str:
    """The whole file as text; DataFormatError when it is missing, unreadable, empty or not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except OSError as e:
        raise DataFormatError(path, f"cannot read: {e.strerror or e}") from None
    if not data.strip():
        raise DataFormatError(path, "file is empty")
    utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(path, f"not UTF-8 text{utf16}: byte 0x{data[e.start]:02x} cannot be decoded; "
                                    "re-save the file as UTF-8", line=line) from None
    if "\x00" in text:  # valid UTF-8, but no CSV has NUL characters: UTF-16 without a BOM, or a binary file
        nul = text.index("\x00")
        raise DataFormatError(path, "not UTF-8 text: contains NUL bytes (it looks like UTF-16 or a binary file); "
                                    "re-save the file as UTF-8", line=text.count("\n", 0, nul) + 1)
    return text


def read_csv_rows(path: str | Path, *, required: Iterable[str] = (), any_of: Iterable[str] = ()) -> pd.DataFrame:
    """Read a UTF-8 CSV as text columns plus the 1-based file line of every row (``_line``).

    The csv module is used rather than ``pandas.read_csv`` because it reports the true file line of
    each record (quoted cells may span lines) and rows with a wrong number of fields.

    Args:
        path: The CSV file.
        required: Columns that must all be present.
        any_of: Columns of which at least one must be present.

    Raises:
        DataFormatError: Unreadable/empty/non-UTF-8 file, malformed CSV, duplicate or missing
            columns, a row with the wrong number of fields, or no data rows.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # Blank lines before the header are skipped, as read_header (format detection) skips them.
        first = next((record for record in reader if any(c.strip() for c in record)), None)
        if first is None:
            raise DataFormatError(path, "file is empty (no CSV header line)")
        header = [c.strip() for c in first]
        header_line = end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in record):
                continue  # blank line or a row of empty cells
            if len(record) != len(header):
                raise DataFormatError(path, f"expected {len(header)} fields as in the header, found {len(record)}",
                                      line=start)
            rows.append(record)
            lines.append(start)
    except csv.Error as e:
        raise DataFormatError(path, f"malformed CSV: {e}", line=reader.line_num) from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataFormatError(path, f"column {name!r} appears twice in the header", line=header_line, field=name)
        seen.add(name)
    found = ", ".join(repr(c) for c in header)
    for name in required:
        if name not in seen:
            raise DataFormatError(path, f"missing required column {name!r}; columns found: {found}", line=header_line,
                                  field=name)
    any_of = tuple(any_of)
    if any_of and not seen.intersection(any_of):
        raise DataFormatError(path, f"needs at least one of the columns {', '.join(map(repr, any_of))}; "
                                    f"columns found: {found}", line=header_line, field=" or ".join(any_of))
    if not rows:
        raise DataFormatError(path, "has a header but no data rows")
    raw = pd.DataFrame(rows, columns=header, dtype="str")
    raw[LINE] = np.asarray(lines, dtype=np.int64)
    return raw


def raise_for_rows(raw: pd.DataFrame, mask: object, path: object, field: str | None, message: str,
                   values: pd.Series | None = None, line_column: str = LINE, count: bool = True) -> None:
    """Raise a DataFormatError about the first row where ``mask`` is true, if any.

    Args:
        raw: The raw rows (for their line numbers).
        mask: Boolean per row: which rows are bad.
        path: File the rows come from.
        field: Column at fault, as the user wrote it.
        message: What is wrong; ``{value!r}`` is replaced by the first bad row's entry of ``values``.
        values: The column the message quotes.
        line_column: Column of ``raw`` holding the file lines.
        count: Append how many more rows have the same problem.
    """
    bad = np.asarray(mask, dtype=bool)
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    text = message.format(value=None if values is None else values.iloc[pos])
    if count and (n := int(bad.sum())) > 1:
        text += f" ({n - 1} more row{'s' if n > 2 else ''} like this)"
    line = raw[line_column].iloc[pos]
    raise DataFormatError(path, text, line=None if pd.isna(line) else int(line), field=field)

