"""Which package may import which, read from the source with ast (nothing is imported, so
the check costs milliseconds): contracts/ at the bottom, what goes on the wire; ingest/
above it, reading what people publish; the services above both, each on its own over
services/common; makelocal/ on top. Imports inside functions count too: they are how a
cycle hides."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("contracts", "ingest", "services", "makelocal")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


MODULES = source_modules()


def imported(name: str, path: Path) -> Iterator[str]:
    """The project modules one module imports, wherever in it the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from ingest import okh` imports the module ingest.okh, not only the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        yield from (t for t in targets if t.split(".")[0] in PACKAGES)


GRAPH = {name: set(imported(name, path)) - {name} for name, path in MODULES.items()}


def edges(source: str) -> Iterator[tuple[str, str]]:
    for name, targets in GRAPH.items():
        if name == source or name.startswith(source + "."):
            yield from ((name, t) for t in targets)


def service_of(module: str) -> str | None:
    """The service a module belongs to; None outside services/ and for services.common."""
    parts = module.split(".")
    if parts[0] != "services" or len(parts) < 2 or parts[1] == "common":
        return None
    return parts[1]


def cycle_within(package: str) -> list[str] | None:
    """One import cycle among the package's modules, as the path round it, or None."""
    inside = {n for n in GRAPH if n == package or n.startswith(package + ".")}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(GRAPH[node] & inside):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(inside):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_readers_import_each_other_without_a_cycle() -> None:
    assert cycle_within("ingest") is None, " -> ".join(cycle_within("ingest") or [])


def test_the_contracts_import_each_other_without_a_cycle() -> None:
    assert cycle_within("contracts") is None, " -> ".join(cycle_within("contracts") or [])


def test_contracts_import_nothing_above_them() -> None:
    upward = [(a, b) for a, b in edges("contracts") if b.split(".")[0] != "contracts"]
    assert upward == []


def test_ingest_imports_only_contracts_and_itself() -> None:
    upward = [(a, b) for a, b in edges("ingest")
              if b.split(".")[0] not in ("contracts", "ingest")]
    assert upward == []


def test_no_service_imports_another() -> None:
    crossing = [(a, b) for a, b in edges("services")
                if service_of(b) is not None and service_of(b) != service_of(a)]
    assert crossing == []


def test_nothing_below_the_command_line_imports_it() -> None:
    upward = [(a, b) for p in ("contracts", "ingest", "services") for a, b in edges(p)
              if b.split(".")[0] == "makelocal"]
    assert upward == []


def test_the_check_sees_the_imports_it_judges() -> None:
    # A parser that found nothing would pass every rule above.
    # (`from ingest import fablabs` is the module ingest.fablabs)
    assert {"contracts.errors", "ingest.fablabs", "ingest.record"} <= GRAPH["ingest.layouts"]
    assert "services.common.sandbox" in {t for _, t in edges("services.registry")}



TEST_FOLDERS = ("unit", "service", "system")
TEST_MODULES = {module_name(p): p for folder in TEST_FOLDERS
                for p in (ROOT / "tests" / folder).glob("*.py")}


def imported_from_tests(path: Path) -> Iterator[str]:
    """The tests.* modules one test module imports, wherever in it the import stands
    (tests/ has no relative imports)."""
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "tests")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
            # `from tests import conftest` imports the module tests.conftest
            yield from ((f"tests.{a.name}" for a in node.names) if node.module == "tests"
                        else [node.module])


def test_test_modules_import_only_support_and_conftest() -> None:
    # a test importing another test module runs (and breaks with) code it does not test;
    # what two tests share is a builder or helper in tests/support
    allowed = ("tests.support", "tests.conftest")
    crossing = [(name, target) for name, path in TEST_MODULES.items()
                for target in imported_from_tests(path)
                if not any(target == a or target.startswith(a + ".") for a in allowed)]
    assert crossing == []


def test_the_test_check_sees_the_imports_it_judges() -> None:
    assert {"tests.conftest", "tests.support.builders"} <= set(
        imported_from_tests(TEST_MODULES["tests.service.test_notifier_delivery"]))
    assert len(TEST_MODULES) > 50
