"""Every syntax error names its line and column and quotes the text at fault: the slips
people make in each format, as a table. Pure, plus one answer over HTTP."""

from __future__ import annotations

import pytest

from contracts.errors import InvalidInput
from ingest.csvtext import read_table
from ingest.documents import parse_document

SLIPS = [
    # (format, document, line, column, text shown, words the message must hold)
    ("yaml", "title: Switch plate\nuser-handle: @makers\n", 2, 14, "user-handle: @makers",
     ["'@'", "must be quoted"]),
    ("yaml", "title: A: B\n", 1, 9, "title: A: B", ["': ' must be quoted"]),
    ("yaml", "title: x\nkeywords:\n\t- a\n", 3, 1, "\t- a", ["tabs"]),
    ("yaml", "title: x\ndescription: \"open\nlicense: MIT\n", 2, 14,
     'description: "open', ["not closed"]),
    ("yaml", "title: x\nkeywords: [a, b\nlicense: MIT\n", 3, 8, "license: MIT", ["','"]),
    ("toml", 'okhv = "OKH-LOSH"\nname = Plate\n', 2, 8, "name = Plate",
     ["text values are quoted"]),
    ("toml", 'name = "a"\nname = "b"\n', 2, 11, 'name = "b"', ["given twice"]),
    ("toml", 'name = "open\nlicense = "MIT"\n', 1, 13, 'name = "open', ["own line"]),
    ("toml", "[part\nname = 1\n", 1, 6, "[part", []),
    ("json", '{"title": "x",\n "keywords": ["a",]\n}', 2, 19, ' "keywords": ["a",]', []),
    ("json", '{"title": "x"\n "license": "MIT"}', 2, 2, ' "license": "MIT"}', ["delimiter"]),
    ("json", "{'title': 'x'}", 1, 2, "{'title': 'x'}", ["double quotes"]),
    ("csv", 'name,city\n"Lab A,Berlin\n', 2, 1, '"Lab A,Berlin', ["never closed"]),
    ("csv", "name,city\nLab A,Berlin,DE\n", 2, 14, "Lab A,Berlin,DE", ["3 cells", "2 columns"]),
    ("csv", 'name,city\n"Lab" A,Berlin\n', 2, 6, '"Lab" A,Berlin', ["after a closing quote"]),
]


@pytest.mark.parametrize(("fmt", "document", "line", "column", "shown", "words"), SLIPS)
def test_a_slip_is_shown_where_it_is(fmt: str, document: str, line: int, column: int,
                                     shown: str, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as caught:
        if fmt == "csv":
            read_table(document.encode())
        else:
            parse_document(document.encode(), fmt)
    error = caught.value
    assert error.code == "syntax"
    assert error.position is not None
    assert (error.position.line, error.position.column, error.position.text) == (
        line, column, shown)
    assert f"line {line}, column {column}" in error.message
    assert repr(shown) in error.message
    for word in words:
        assert word in error.message


def test_a_long_line_is_shown_around_the_column() -> None:
    document = "title: x\ndescription: " + "a" * 500 + " @b: c\n"
    with pytest.raises(InvalidInput) as caught:
        parse_document(document.encode(), "yaml")
    position = caught.value.position
    assert position is not None and position.line == 2
    assert len(position.text) <= 82 and position.text.startswith("…")
    assert "@b: c" in position.text


def test_the_position_survives_the_reader_child() -> None:
    error = InvalidInput("m", field=None, code="syntax")
    assert InvalidInput.from_dict(error.as_dict()).position is None
    with pytest.raises(InvalidInput) as caught:
        parse_document(b"a: b: c\n", "yaml")
    again = InvalidInput.from_dict(caught.value.as_dict())
    assert again.position == caught.value.position and again.message == caught.value.message
