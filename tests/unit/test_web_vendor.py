"""The vendored browser files: each one is what its manifest says, nothing lies there unlisted,
and what services/web serves makes a browser fetch nothing from another host (offline map)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.web import vendor

ROOTS = pytest.mark.parametrize("root", vendor.ROOTS, ids=lambda r: str(r.relative_to(vendor.REPO)))
SERVED = vendor.STATIC_VENDOR
URL = re.compile(r"https?://[^\s\"'`)<>\\]+")
# Every absolute URL in the served scripts, and why a browser never fetches it at load time.
# A new version that brings another one fails here, to be looked at before it is allowed.
KNOWN_JS_URLS = {
    # the SVG namespace, given to document.createElementNS and in inline <svg xmlns=...>
    "http://www.w3.org/2000/svg",
    # Leaflet's @preserve banner, and the href of the attribution control's link: followed only
    # if a person clicks it
    "https://leafletjs.com",
    # topojson-client's banner comment
    "https://github.com/topojson/topojson-client",
}


def served(suffix: str) -> list[Path]:
    return sorted(p for p in SERVED.rglob(f"*{suffix}") if p.is_file())


@ROOTS
def test_every_listed_file_is_there_with_its_sha256(root: Path) -> None:
    assert vendor.check(root) == []
    for e in vendor.entries(root):
        assert e["package"] and e["version"] and e["source"] and e["licence"], e
        assert len(e["sha256"]) == 64, e
        assert (root / e["path"]).stat().st_size == e["bytes"], e


@ROOTS
def test_every_file_in_the_folder_is_listed(root: Path) -> None:
    listed = {e["path"] for e in vendor.entries(root)} | {vendor.MANIFEST}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert present - listed == set()


def test_every_package_brings_its_licence() -> None:
    for root in vendor.ROOTS:
        for name, pkg in vendor.load(root)["packages"].items():
            assert any(Path(f["source"]).name.startswith("LICENSE") for f in pkg["files"]), name


def test_check_reports_a_missing_file_and_a_changed_one(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.js").write_text("changed")
    files = [
        {"source": "a.js", "path": "p/a.js", "sha256": "0" * 64, "bytes": 7},
        {"source": "b.js", "path": "p/b.js", "sha256": "0" * 64, "bytes": 7},
    ]
    manifest = {"packages": {"p": {"version": "1.0.0", "licence": "ISC", "files": files}}}
    (tmp_path / vendor.MANIFEST).write_text(json.dumps(manifest))
    problems = vendor.check(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith("p/a.js: sha256")
    assert problems[1].startswith("p/b.js: missing")


def test_tests_only_files_are_not_served() -> None:
    assert not list(SERVED.rglob("axe*"))
    assert SERVED not in vendor.TESTS_VENDOR.parents


def test_css_loads_only_files_beside_it() -> None:
    sheets = served(".css")
    assert sheets
    for css in sheets:
        # comments hold bug tracker links, never fetched
        text = re.sub(r"/\*.*?\*/", "", css.read_text(encoding="utf-8"), flags=re.S)
        assert "@import" not in text, css
        assert not URL.search(text), css
        for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)", text):
            if ref.startswith("#"):  # #default#VML: an old IE behaviour, not a request
                continue
            assert not re.match(r"^(/|[a-z][a-z0-9+.-]*:)", ref, re.I), (css, ref)
            assert (css.parent / ref).resolve().is_file(), (css, ref)


def test_scripts_name_no_host_they_would_load_from() -> None:
    scripts = served(".js")
    assert scripts
    for js in scripts:
        text = js.read_text(encoding="utf-8")
        assert set(URL.findall(text)) <= KNOWN_JS_URLS, js
        # DevTools alone asks for a source map, and then from beside the script
        for ref in re.findall(r"sourceMappingURL=(\S+)", text):
            assert "/" not in ref and ":" not in ref, (js, ref)


def test_map_data_is_topojson_that_names_no_url() -> None:
    atlases = served(".json")
    atlases = [p for p in atlases if p.name != vendor.MANIFEST]
    assert {p.name for p in atlases} == {"countries-50m.json", "land-50m.json"}
    for path in atlases:
        text = path.read_text(encoding="utf-8")
        assert not URL.search(text), path
        topology = json.loads(text)
        assert topology["type"] == "Topology"
        assert "land" in topology["objects"]
