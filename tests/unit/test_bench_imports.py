"""The benchmarks are not run by the tests, but they build on the tests' support code: a
move there must not leave a benchmark that no longer starts."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from tests.support.paths import ROOT

BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


def test_there_are_benchmarks() -> None:
    assert {"fanout", "notifier", "web", "matcher"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_each_benchmark_imports(name: str) -> None:
    try:
        importlib.import_module(f"bench.{name}")
    except SystemExit as exc:
        # bench.consumers measures FastStream, which no extra installs: it says so and stops
        assert name == "consumers" and importlib.util.find_spec("faststream") is None
        assert "pip install 'faststream" in str(exc)
