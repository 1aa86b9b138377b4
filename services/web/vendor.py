"""Third-party browser files kept in the repository, so that a page never loads from a CDN.

Each vendor folder has a VENDOR.json manifest:

    {"packages": {"leaflet": {"version": "1.9.4", "licence": "BSD-2-Clause",
                              "integrity": "sha512-...",  # of the npm tarball
                              "files": [{"source": "dist/leaflet.js",  # path in the package
                                         "path": "leaflet/leaflet.js",  # path in the folder
                                         "sha256": "...", "bytes": 148000}, ...]}}}

`check(root)` lists what is wrong with a folder (a missing file, a wrong sha256).
`python -m services.web.vendor fetch` downloads every package again with `npm pack` at the
version that its manifest names, and rewrites the files and the manifest: to update a package,
edit its "version" (and "source" paths, if they moved) and run it. `... vendor check` checks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MANIFEST = "VENDOR.json"
REPO = Path(__file__).resolve().parents[2]
# served by services/web (/static/vendor/...)
STATIC_VENDOR = REPO / "services" / "web" / "static" / "vendor"
# used by the tests only (axe-core), never served in production
TESTS_VENDOR = REPO / "tests" / "vendor"
ROOTS = (STATIC_VENDOR, TESTS_VENDOR)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(root: Path) -> dict:
    return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))


def entries(root: Path) -> list[dict]:
    """Every vendored file of a folder, each with its package, version and licence."""
    out = []
    for name, pkg in load(root)["packages"].items():
        for f in pkg["files"]:
            out.append({"package": name, "version": pkg["version"], "licence": pkg["licence"], **f})
    return out


def check(root: Path) -> list[str]:
    """Problems with a vendor folder: a listed file that is missing or has another sha256."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return [f"{root / MANIFEST}: missing"]
    problems = []
    for e in entries(root):
        path = root / e["path"]
        if not path.is_file():
            problems.append(f"{e['path']}: missing ({e['package']}@{e['version']} {e['source']})")
        elif (got := sha256(path)) != e["sha256"]:
            problems.append(f"{e['path']}: sha256 {got}, manifest says {e['sha256']}")
    return problems


def _npm_pack(spec: str, into: Path) -> tuple[Path, dict]:
    """The package's tarball, extracted under into/package, and npm's record of it."""
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
        cwd=into,
    ).stdout
    record = json.loads(out)[0]
    with tarfile.open(into / record["filename"]) as tar:
        tar.extractall(into, filter="data")
    return into / "package", record


def fetch(root: Path) -> None:
    """Download each package of the folder's manifest and rewrite its files and the manifest."""
    root = Path(root)
    manifest = load(root)
    for name, pkg in manifest["packages"].items():
        with tempfile.TemporaryDirectory(prefix="vendor-") as tmp:
            package, record = _npm_pack(f"{name}@{pkg['version']}", Path(tmp))
            info = json.loads((package / "package.json").read_text(encoding="utf-8"))
            if info["version"] != pkg["version"]:
                raise SystemExit(f"{name}: asked for {pkg['version']}, got {info['version']}")
            # the package's own folder is laid anew, so a file it no longer ships goes too
            for top in {Path(f["path"]).parts[0] for f in pkg["files"]}:
                shutil.rmtree(root / top, ignore_errors=True)
            for f in pkg["files"]:
                src, dst = package / f["source"], root / f["path"]
                if not src.is_file():
                    raise SystemExit(f"{name}@{pkg['version']}: no file {f['source']}")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                f["sha256"] = sha256(dst)
                f["bytes"] = dst.stat().st_size
            pkg["licence"] = info.get("license", pkg.get("licence", "UNKNOWN"))
            pkg["integrity"] = record["integrity"]
        print(f"{root.relative_to(REPO)}: {name}@{pkg['version']}: {len(pkg['files'])} files")
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("fetch", "check"):
        print("usage: python -m services.web.vendor fetch|check", file=sys.stderr)
        return 2
    if argv[0] == "fetch":
        for root in ROOTS:
            fetch(root)
    problems = [f"{root}: {p}" for root in ROOTS for p in check(root)]
    print("\n".join(problems) or "vendored files match their manifests")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
