"""The web page in a real browser (Debian's chromium, driven by Playwright) against a real
`makelocal up` stack holding the shared data (the OKH designs, ~1,300 fab labs, the Field
Ready designs): a maker's whole journey, from a search to the alert email that links back;
and every page at a desktop's and a phone's width, checked by axe-core, with screenshots
kept in .artifacts/screenshots. The HTTP-level tests of the same pages are test_web_pages."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from makelocal.embedded import free_port
from tests.support.browser import CHROMIUM, DESKTOP, Findings, examine, link_in, markers
from tests.support.builders import facility_doc
from tests.support.helpers import DATA, JSON
from tests.support.helpers import read_until as _read_until

pytestmark = pytest.mark.slow

# The place a maker is at: the centre of Nantes (GeoNames). The shared fab labs' closest
# one that can 3D print is ICI Nantes, 1.5 km away; the next is 55 km away.
HERE = {"latitude": 47.2173, "longitude": -1.5534}
CLOSEST = ("fablabs-74", "ICI Nantes")
DESIGN_NAME = "Switch Plate - GoPro Compatible"  # the shared OKH v1 manifest, 3D printed
NEW_LAB = ("atelier-reze", "Atelier de Rezé", 47.1800, -1.5500)  # 4 km south of Nantes
MAKER = "maker@example.org"


@dataclass
class Stack:
    web: str
    registry: str
    key: str
    mail: Path
    design: str  # the shared design's id, as the import made it


def _until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.3)
    return found


def _cli(*args: str, refused_ok: bool = False) -> str:
    """`makelocal ...`'s output; with `refused_ok`, an import that refused some records
    (exit 1: the shared data holds rows no one can place) is no failure here."""
    done = subprocess.run([sys.executable, "-m", "makelocal.cli", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode in ((0, 1) if refused_ok else (0,)), done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`makelocal up` on free ports, an organization, the shared data imported with
    `makelocal import`, and the matcher caught up with it."""
    data_dir = tmp_path_factory.mktemp("browser") / "data"
    ports = {name: free_port() for name in ("nats", "nats-monitor", "postgres", "registry",
                                            "matcher", "notifier", "web", "smtp")}
    args = [sys.executable, "-m", "makelocal.cli", "up", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _read_until(proc, "ready", timeout=90)
        registry = f"http://127.0.0.1:{ports['registry']}"
        web = f"http://127.0.0.1:{ports['web']}"
        made = _cli("org", "create", "Browser tests", "--data-dir", str(data_dir))
        key = made.split("API key (shown once, store it now): ")[1].strip()
        imported = _cli("import", str(DATA), "--api-key", key, "--registry-url", registry,
                        "--no-progress", refused_ok=True)
        assert re.search(r"created (\d{4}),", imported), imported
        found = httpx.get(f"{registry}/v1/designs", params={"q": "GoPro"}, timeout=10).json()
        design = next(i["id"] for i in found["items"] if i["design"]["name"] == DESIGN_NAME)

        def indexed() -> bool:  # the web page shows the closest lab: the matcher has it
            page = httpx.get(f"{web}/designs/{design}", timeout=10, params={
                "place": f"{HERE['latitude']}, {HERE['longitude']}", "radius_km": 100})
            return f'href="/facilities/{CLOSEST[0]}"' in page.text
        _until(indexed, 60, "the matcher indexes the shared data")
        yield Stack(web, registry, key, data_dir / "mail", design)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group `up` leads: ours alone
            proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def findings() -> Iterator[Findings]:
    seen = Findings()
    yield seen
    print("\n" + seen.report())


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh browser tab at a desktop's width, in Nantes (the browser's geolocation); no
    script error and no sub-resource (a script, the map's land) missing, on any page."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.web,
                                  geolocation=HERE, permissions=["geolocation"])
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    # the console's errors too: what the page's security policy blocked shows there
    # (a page answering 404 or 422 on purpose is logged there as a failed load: the
    # sub-resources that must not fail are checked by their responses below)
    tab.on("console", lambda m: m.type == "error" and not m.text.startswith(
        "Failed to load resource") and problems.append(f"console: {m.text}"))
    tab.on("response", lambda r: r.status >= 400 and r.request.resource_type != "document"
           and problems.append(f"{r.status} {r.url}"))
    yield tab
    context.close()
    assert problems == []


def _mail_to(stack: Stack, address: str, containing: str, timeout: float = 60) -> str:
    """The text of the first email the stack's SMTP sink kept for `address` that says
    `containing`."""
    def find() -> str | None:
        for path in sorted(stack.mail.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if address in str(message["To"]):
                text = message.get_body(("plain",)).get_content()
                if containing in text:
                    return text
        return None
    return str(_until(find, timeout, f"an email to {address} saying {containing!r}"))


def _matches(page: Page) -> list[tuple[str, str, float]]:
    """(facility id, name, km) of each facility listed as able to make the design."""
    rows = []
    for item in page.locator("ol.matches > li").all():
        link = item.locator("h3 a")
        meta = item.locator(".meta").inner_text()
        km = re.match(r"([\d.]+) km", meta)
        rows.append((link.get_attribute("href").rsplit("/", 1)[1], link.inner_text(),
                     float(km.group(1)) if km else float("inf")))
    return rows


def test_a_maker_finds_a_design_near_them_and_is_told_of_a_new_lab(
        page: Page, stack: Stack, findings: Findings) -> None:
    # search a shared design and open it
    page.goto("/")
    page.get_by_label("Words").fill("GoPro")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=DESIGN_NAME).click()
    expect(page).to_have_url(re.compile(rf"/designs/{stack.design}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(DESIGN_NAME)
    expect(page.locator("table.needs")).to_contain_text("3D printing")

    # the map shows a marker for each facility listed that has a place
    everywhere = markers(page)
    assert everywhere > 10 and everywhere <= len(_matches(page))

    # near me: the browser's location, then the closest fab lab first
    page.get_by_role("button", name="Use my location").click()
    expect(page.get_by_label("Place")).to_have_value(
        f"{HERE['latitude']:.4f}, {HERE['longitude']:.4f}")
    page.get_by_label("Within").select_option("100")
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_text("the closest first")).to_be_visible()
    near = _matches(page)
    assert near[0][:2] == CLOSEST, near
    assert near[0][2] < 3 and [km for *_, km in near] == sorted(km for *_, km in near)
    assert markers(page) == len(near)

    # subscribe by email from the design's page: the design and the place come along
    page.get_by_role("link", name="Tell me when someone near me can make it").click()
    expect(page.get_by_label("A design (its id, optional)")).to_have_value(stack.design)
    expect(page.get_by_label("Place", exact=True)).to_have_value(
        f"{HERE['latitude']:.4f}, {HERE['longitude']:.4f}")
    page.get_by_label("Your email address").fill(MAKER)
    page.get_by_role("button", name="Send me alerts").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    examine(page, "alert-sent", findings, reload=False)

    # the link in the email (kept by the stack's SMTP sink): a page, then a button
    confirm = link_in(_mail_to(stack, MAKER, "/v1/email/verify"), "/v1/email/verify")
    assert confirm.startswith(stack.web + "/"), confirm
    page.goto(confirm)
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("status")).to_contain_text("Your address is confirmed")
    examine(page, "email-confirmed", findings, reload=False)

    # a new lab near the place that can make it: the alert arrives and links back
    lab_id, lab_name, lat, lon = NEW_LAB
    made = httpx.post(f"{stack.registry}/v1/facilities", params={"id": lab_id}, timeout=10,
                      headers={"Authorization": f"Bearer {stack.key}"} | JSON,
                      content=facility_doc(lab_name, ["3D printing"], lat=lat, lon=lon))
    assert made.status_code == 201, made.text
    alert = _mail_to(stack, MAKER, f"Facility {lab_id} can now make design {stack.design}")
    back = link_in(alert, f"/designs/{stack.design}")
    assert back == f"{stack.web}/designs/{stack.design}", alert
    page.goto(back)
    expect(page.get_by_role("heading", level=1)).to_have_text(DESIGN_NAME)
    page.get_by_label("Place").fill("Nantes")
    page.get_by_label("Within").select_option("25")
    page.get_by_role("button", name="Find").click()
    near = _matches(page)
    assert [row[0] for row in near[:2]] == [CLOSEST[0], lab_id], near

    # and the same email's way out
    page.goto(link_in(alert, "/v1/email/unsubscribe"))
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("status")).to_contain_text("You are unsubscribed")
    examine(page, "email-unsubscribed", findings, reload=False)


def _alert_refused(page: Page, stack: Stack) -> None:
    page.goto("/alerts")
    page.get_by_label("Your email address").fill("not-an-address")
    page.get_by_label("Place", exact=True).fill("Nantes")
    page.get_by_role("button", name="Send me alerts").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Your email address")).to_have_attribute("aria-invalid", "true")


PAGES: dict[str, Callable[[Stack], str] | Callable[[Page, Stack], None]] = {
    "search": lambda s: "/?q=GoPro",
    "search-nothing": lambda s: "/?q=zzzqqqxx",
    "search-by-process": lambda s: "/?process=3d-printing",
    "design": lambda s: f"/designs/{s.design}",
    "design-near": lambda s: f"/designs/{s.design}?place=Nantes&radius_km=100",
    "design-unknown-place": lambda s: f"/designs/{s.design}?place=Nowhereville",
    "facility": lambda s: f"/facilities/{CLOSEST[0]}",
    "map": lambda s: "/map",
    "alert-form": lambda s: f"/alerts?design={s.design}&place=Nantes",
    "alert-refused": _alert_refused,
    "email-confirm": lambda s: "/v1/email/verify?token=not-a-real-token",
    "email-link-invalid": lambda s: "/v1/email/unsubscribe?token=%3Cx%3E",
    "not-found": lambda s: "/designs/no-such-design",
}


@pytest.mark.parametrize("name", PAGES)
def test_each_page_at_desktop_and_phone_width(
        page: Page, stack: Stack, findings: Findings, name: str) -> None:
    """axe-core finds nothing serious or critical, nothing is wider than a phone, every
    link to the site answers, each map draws its markers; a screenshot of each."""
    how = PAGES[name]
    if name == "alert-refused":
        how(page, stack)  # type: ignore[call-arg]
    else:
        page.goto(how(stack))  # type: ignore[call-arg]
    examine(page, name, findings, reload=name != "alert-refused")
    if name == "facility":  # its one marker opens a link to itself
        page.locator("#map path.leaflet-interactive").click()
        expect(page.locator(".leaflet-popup-content a")).to_have_attribute(
            "href", f"/facilities/{CLOSEST[0]}")
    if name == "map":  # every facility with a place
        placed = httpx.get(f"{stack.web}/map/facilities.json", timeout=10).json()
        assert markers(page) == len(placed) > 1000
