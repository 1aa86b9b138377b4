"""Where the tests find things: the checkout, its test data, and ../shared/data beside it
(CI lays shared/ beside the clone, as it is beside this checkout)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TEST_DATA = TESTS / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"
