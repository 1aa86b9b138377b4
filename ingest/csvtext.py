"""CSV bytes -> header and rows, each row with the line it starts on. The one CSV reader
every CSV layout uses, so every CSV syntax error names its line and column and quotes the
text at fault. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from contracts.errors import InvalidInput
from ingest.documents import located

DELIMITERS = (",", ";", "\t")


@dataclass
class Table:
    """A parsed CSV file: column names as written, and rows keyed by them."""

    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line the row starts on, cells by column)
    text: str

    @property
    def columns(self) -> set[str]:
        """The header's names folded (case, spacing, BOM), for recognising a layout."""
        return {fold(c) for c in self.header}


def fold(column: str) -> str:
    return " ".join(column.replace("\ufeff", "").strip().lower().replace("-", "_").split())


def decode(raw: bytes) -> str:
    # Real exports carry the odd broken byte (the fablabs.io CSV does); the readers warn
    # about U+FFFD in a row rather than refuse a whole file for one bad character.
    return raw.decode("utf-8-sig", errors="replace")


def read_table(raw: bytes) -> Table:
    """Parse a CSV file strictly; InvalidInput(code="syntax", position=...) on the first
    unterminated quote, stray text after a closing quote, NUL, or a row with more cells
    than the header."""
    text = decode(raw)
    lines = _lines(text)
    records = _records(lines, _delimiter(text))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for line, cells, columns in records:
        if header is None:
            header = [c.strip() for c in cells]
            if not any(header):
                raise located("CSV", "the header row names no columns", "".join(lines), line, 1)
            continue
        if len(cells) == 1 and not cells[0].strip():
            continue  # a blank line between rows holds nothing
        if len(cells) > len(header):
            at_line, at_column = columns[len(header)]
            raise located("CSV", f"row has {len(cells)} cells but the header names"
                          f" {len(header)} columns", "".join(lines), at_line, at_column)
        # Short rows are padded: spreadsheets drop trailing empty cells.
        rows.append((line, {h: (cells[i] if i < len(cells) else "")
                            for i, h in enumerate(header)}))
    if header is None:
        raise InvalidInput("empty CSV file", code="syntax")
    return Table(header, rows, text)


def _delimiter(text: str) -> str:
    """The separator the header line uses most (comma unless it says otherwise), so a
    European semicolon export or a TSV read as well."""
    first = text.split("\n", 1)[0]
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _records(lines: list[str], delimiter: str,
             ) -> Iterator[tuple[int, list[str], list[tuple[int, int]]]]:
    """(line, cells, (line, column) where each cell starts) per record. RFC 4180 quoting:
    a quoted cell may span lines and holds "" for one quote."""
    index = 0
    while index < len(lines):
        start = index + 1
        line = lines[index]
        if '"' not in line and "\x00" not in line:
            # Fast path: most rows of real files hold no quote at all.
            body = line.rstrip("\r\n")
            cells = body.split(delimiter)
            columns, col = [], 1
            for cell in cells:
                columns.append((start, col))
                col += len(cell) + 1
            index += 1
            yield start, cells, columns
            continue
        cells, columns, index = _quoted_record(lines, index, delimiter)
        yield start, cells, columns


def _quoted_record(lines: list[str], index: int, delimiter: str,
                   ) -> tuple[list[str], list[tuple[int, int]], int]:
    cells: list[str] = []
    columns: list[tuple[int, int]] = []
    cell: list[str] = []
    quoted = False  # inside a quoted cell
    closed = False  # just after a quoted cell's closing quote
    open_at = (0, 0)
    line_no = index + 1
    columns.append((line_no, 1))
    while index < len(lines):
        line = lines[index]
        line_no = index + 1
        col = 0
        while col < len(line):
            ch = line[col]
            if ch == "\x00":
                raise located("CSV", "NUL character in CSV", "".join(lines), line_no, col + 1)
            if quoted:
                if ch == '"':
                    if line[col + 1:col + 2] == '"':
                        cell.append('"')
                        col += 2
                        continue
                    quoted, closed = False, True
                else:
                    cell.append(ch)
                col += 1
                continue
            if ch in "\r\n":
                cells.append("".join(cell))
                return cells, columns, index + 1
            if ch == delimiter:
                cells.append("".join(cell))
                cell, closed = [], False
                columns.append((line_no, col + 2))
            elif closed:
                raise located("CSV", f"text after a closing quote (expected {delimiter!r} or"
                              " end of row)", "".join(lines), line_no, col + 1)
            elif ch == '"' and not cell:
                quoted, open_at = True, (line_no, col + 1)
            else:
                cell.append(ch)  # a quote inside an unquoted cell (5" disk) is text
            col += 1
        index += 1
    if quoted:
        raise located("CSV", "quoted cell never closed (unterminated quote)",
                      "".join(lines), *open_at)
    cells.append("".join(cell))
    return cells, columns, index


def _lines(text: str) -> list[str]:
    # Lines end at "\n" only (as editors count them); str.splitlines would also break at
    # form feeds and U+2028 inside a cell and put every later line number off.
    pieces = text.split("\n")
    out = [p + "\n" for p in pieces[:-1]]
    if pieces[-1]:
        out.append(pieces[-1])
    return out
