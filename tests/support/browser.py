"""Looking at a page in a real browser (Debian's chromium through Playwright): axe-core's
accessibility check, the layout at a phone's width, the map's markers, links that lead
somewhere, and a screenshot of each page kept as a test artifact."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from playwright.sync_api import Page

from tests.support.paths import ROOT, TESTS

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run); never `playwright install`
AXE = TESTS / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
SEVERE = ("serious", "critical")

# every element wider than the screen that is not inside something scrolling on its own
# (a table scrolls sideways by design; the map's panes are the map's business)
_OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (e) => {
    for (let p = e.parentElement; p; p = p.parentElement) {
      if (p.classList.contains("leaflet-container")) return true;
      const x = getComputedStyle(p).overflowX;
      if ((x === "auto" || x === "scroll" || x === "hidden") && p !== document.body
          && p !== document.documentElement) return true;
    }
    return false;
  };
  const out = [];
  for (const e of document.body.querySelectorAll("*")) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if ((r.right > width + 1 || r.left < -1) && !scrolls(e) && !e.classList.contains("skip"))
      out.push(e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
               + (e.className && typeof e.className === "string" ? "." + e.className : "")
               + " " + Math.round(r.left) + ".." + Math.round(r.right));
  }
  return {scroll: document.documentElement.scrollWidth, width: width, wide: out.slice(0, 10)};
}"""

_AXE_RUN = """async () => {
  const r = await axe.run(document);
  const brief = (v) => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" "))});
  return {version: axe.version, violations: r.violations.map(brief),
          incomplete: r.incomplete.map(brief)};
}"""


_HREFS = """(all) => all.filter((a) => !a.closest(".leaflet-container"))
                      .map((a) => a.getAttribute("href"))"""


@dataclass
class Findings:
    """What the pages looked at so far showed: printed at the end of a test."""

    axe_version: str = ""
    minor: list[str] = field(default_factory=list)  # axe violations below serious
    # axe's "needs review" (incomplete: it could not decide), by rule: where
    review: dict[str, set[str]] = field(default_factory=dict)
    checked_links: set[str] = field(default_factory=set)
    screenshots: list[Path] = field(default_factory=list)

    def report(self) -> str:
        return (f"axe-core {self.axe_version}; minor violations: {self.minor or 'none'}; "
                f"needs review (not violations): {self.review or 'none'}; "
                f"{len(self.checked_links)} links followed; {len(self.screenshots)} "
                f"screenshots in {SCREENSHOTS}")


def axe_check(page: Page, where: str, findings: Findings) -> None:
    """axe-core on the page as it is: no serious or critical violation."""
    # evaluated through the DevTools protocol: the page's own policy (script-src 'self')
    # rightly refuses a script element the test would add
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(_AXE_RUN)
    findings.axe_version = result["version"]
    severe = [v for v in result["violations"] if v["impact"] in SEVERE]
    findings.minor += [f"{where}: {v['id']} ({v['impact']}) {v['nodes']}"
                       for v in result["violations"] if v["impact"] not in SEVERE]
    for v in result["incomplete"]:
        findings.review.setdefault(f"{v['id']} ({v['impact']})", set()).update(v["nodes"])
    assert not severe, f"{where}: axe-core finds {severe}"


def fits(page: Page, where: str) -> None:
    """Nothing is wider than the screen: no sideways scrolling, nothing cut off."""
    layout = page.evaluate(_OVERFLOW)
    assert layout["scroll"] <= layout["width"] and not layout["wide"], (
        f"{where}: wider than {layout['width']} px: {layout}")


def markers(page: Page) -> int:
    """The map has drawn every marker its data names, on the Natural Earth land; the
    number of markers."""
    page.wait_for_selector("#map[data-marker-count]", timeout=10_000)
    page.wait_for_selector("#map[data-basemap=loaded]", timeout=10_000)
    count = int(page.get_attribute("#map", "data-marker-count") or "0")
    drawn = page.locator("#map path.leaflet-interactive").count()
    assert drawn == count, f"{count} markers in the data, {drawn} drawn"
    return count


def links_lead_somewhere(page: Page, findings: Findings) -> None:
    """Every link on the page to this site answers (2xx), each followed once per test
    run, and every link within the page has its target; links elsewhere (a design's
    repository) are not followed from a test, nor the map's own controls (Leaflet's
    zoom buttons are `<a href="#" role="button">`)."""
    base = page.url
    origin = urlsplit(base).netloc
    hrefs = page.eval_on_selector_all("a[href]", _HREFS)
    for href in hrefs:
        if href.startswith("#"):  # within the page (the skip link): its target is there
            assert page.locator(f"[id='{href[1:]}']").count() == 1, f"{base}: no {href}"
            continue
        url = urljoin(base, href).split("#")[0]
        if urlsplit(url).netloc != origin or url in findings.checked_links:
            continue
        findings.checked_links.add(url)
        answer = page.request.get(url, max_redirects=0, timeout=15_000)
        assert 200 <= answer.status < 300, f"{base}: link {href} answers {answer.status}"


def examine(page: Page, name: str, findings: Findings, *, reload: bool = True) -> None:
    """The page at a desktop's and a phone's width: axe-core, the layout, links, and a
    screenshot of each (.artifacts/screenshots/<name>-desktop.png, -phone.png). A page
    reached by a GET is loaded anew at each width (the map fits itself when it loads);
    one that answered a POST is only resized."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = page.url
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        if page.viewport_size != size:
            page.set_viewport_size(size)
            if reload:
                page.goto(url)
        page.wait_for_load_state("networkidle")
        if page.locator("#map").count():
            markers(page)
        where = f"{name} ({label}, {url})"
        axe_check(page, where, findings)
        if label == "phone":
            fits(page, where)
        shot = SCREENSHOTS / f"{name}-{label}.png"
        page.screenshot(path=str(shot), full_page=True)
        findings.screenshots.append(shot)
    page.set_viewport_size(DESKTOP)
    links_lead_somewhere(page, findings)


def link_in(text: str, path: str) -> str:
    """The first http(s) URL in an email's text whose path starts with `path`."""
    found = re.search(r"https?://[^\s<>\"]+" + re.escape(path) + r"[^\s<>\"]*", text)
    assert found, f"no link to {path} in:\n{text}"
    return found.group(0)
