"""`makelocal validate`, run as people run it: no key, no server; what would be stored,
the warnings and the inferred needs with their evidence; non-zero on any error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.paths import TEST_DATA

HERE = TEST_DATA / "okh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "makelocal.cli", "validate", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "MAKELOCAL_DATABASE_URL": "postgresql://"
                               "nobody@127.0.0.1:1/none", "MAKELOCAL_NATS_URL":
                               "nats://127.0.0.1:1"})


def test_real_manifests_are_reported_with_their_inferred_needs(data_dir: Path) -> None:
    done = run(str(data_dir / "okh"), "--json")
    assert done.returncode == 0, done.stderr
    results = {Path(r["where"]).name: r for r in json.loads(done.stdout)}
    plate = results["switch-mounting-plate-gopro.okh.yml"]
    [need] = plate["inferred"]
    assert (need["id"], need["field"]) == ("3d-printing", "description")
    assert "3D printable" in need["evidence"]
    assert results["ohloom.okh.toml"]["matchable"] is True

    text = run(str(data_dir / "okh" / "switch-mounting-plate-gopro.okh.yml"))
    assert text.returncode == 0
    assert "inferred process 3D printing" in text.stdout and "from description" in text.stdout


def test_an_error_names_line_column_and_text_and_fails(tmp_path: Path) -> None:
    done = run(str(HERE / "case06--zacplus--okh.toml"), "--json")
    assert done.returncode == 1
    [result] = json.loads(done.stdout)
    assert result["error"]["line"] == 9 and result["error"]["text"].startswith("image = ")
    silent = tmp_path / "lamp.okh.yml"
    silent.write_text("title: Lamp\ndescription: A lamp.\n")
    done = run(str(silent))
    assert done.returncode == 0
    assert "needs information" in done.stdout and "`manufacturing-processes`" in done.stdout


def test_a_missing_file_or_bad_map_is_a_usage_error(tmp_path: Path) -> None:
    assert run(str(tmp_path / "nope.yml")).returncode == 2
    table = tmp_path / "labs.csv"
    table.write_text("Lab,Lat\nA,1\n")
    done = run(str(table), "--map", "Lab=nonsense")
    assert done.returncode == 2 and "nonsense" in done.stderr
