"""The notifier's pure parts: signatures (checked by the standardwebhooks package),
the retry schedule, which addresses a webhook may reach, and routing."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from contracts.matches import PairView
from services.notifier import schedule, signing
from services.notifier.addresses import Refused, check_url, parse_networks, why_refused
from services.notifier.guard import Guard
from services.notifier.subscriptions import Filter, Route, RoutingIndex


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 44
    body = b'{"type":"test","data":{}}'
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret], "msg_1", now, body)
    assert Webhook(secret).verify(body, headers) == {"type": "test", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    body = b"{}"
    headers = signing.headers([new, old], "msg_2", int(datetime.now(UTC).timestamp()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_schedule_with_jitter_and_retry_after_bounds() -> None:
    rng = random.Random(1)
    steps = schedule.DEFAULT_SCHEDULE
    for attempt, base in enumerate(steps, start=1):
        for _ in range(50):
            delay = schedule.next_delay(attempt, steps, rng=rng)
            assert delay is not None and 0.8 * base <= delay <= 1.2 * base
    assert schedule.next_delay(len(steps) + 1, steps) is None
    # Retry-After within [scheduled, 2 x scheduled]
    assert schedule.next_delay(2, steps, retry_after=1) == 300
    assert schedule.next_delay(2, steps, retry_after=450) == 450
    assert schedule.next_delay(2, steps, retry_after=99999) == 600


def test_retry_after_as_seconds_or_http_date() -> None:
    """(What an answer's Retry-After does to its outcome: test_notifier_outcomes.py.)"""
    assert schedule.parse_retry_after("7") == 7
    now = datetime.now(UTC).replace(microsecond=0)  # HTTP dates have whole seconds
    assert schedule.parse_retry_after(format_datetime(now + timedelta(seconds=8)), now) == 8
    assert schedule.parse_retry_after("soon") is None


REFUSED = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
           "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
           "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:7f00:1::", "::"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert why_refused(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert why_refused(ipaddress.ip_address(address)) is None


def test_operator_allowlist() -> None:
    allowed = parse_networks("127.0.0.0/8, ::1/128")
    assert why_refused(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert why_refused(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert why_refused(ipaddress.ip_address("10.0.0.1"), allowed) is not None
    with pytest.raises(ValueError):
        parse_networks("not-a-cidr")


@pytest.mark.parametrize("url", ["ftp://example.org/", "http://user:pw@example.org/",
                                 "http:///nohost", "https://example.org/#frag", "http://[::1"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(Refused):
        check_url(url)


async def test_guard_checks_what_the_name_resolves_to_each_time() -> None:
    answers = {"good.test": ["93.184.216.34"], "inside.test": ["10.0.0.5"],
               "mixed.test": ["93.184.216.34", "127.0.0.1"]}
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host == "rebind.test":
            # public at registration, loopback at connect time
            return ["93.184.216.34"] if calls.count(host) == 1 else ["127.0.0.1"]
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]

    refused = []
    guard = Guard((), resolver, lambda: refused.append(1))
    assert (await guard.address("https://good.test/hook"))[3] == ipaddress.ip_address(
        "93.184.216.34")
    for url in ("http://inside.test/", "http://mixed.test/", "http://nowhere.test/",
                "http://127.0.0.1:8080/", "http://[::ffff:7f00:1]/", "http://169.254.169.254/"):
        with pytest.raises(Refused):
            await guard.address(url)
    await guard.address("http://rebind.test/")
    with pytest.raises(Refused):
        await guard.address("http://rebind.test/")
    assert len(refused) == 7


def _event(type: str = "matches.found", **over: Any) -> PairView:
    pair = {"design_id": "d1", "design_version": 1, "facility_id": "f1",
            "facility_version": 1, "design_processes": ["fdm"], "facility_lat": 52.52,
            "facility_lon": 13.40, "row": {}} | over
    return PairView(kind=type.split(".")[1], **pair)  # type: ignore[arg-type]


def test_routing_by_every_filter_field() -> None:
    routes = {
        "all": Filter(),
        "fac": Filter(facility_ids=["f1"]),
        "other_fac": Filter(facility_ids=["f2"]),
        "design": Filter(design_ids=["d1"], event_types=["matches.withdrawn"]),
        "printing": Filter(processes=["3D printing"]),  # a more generic kind of fdm
        "milling": Filter(processes=["cnc-milling"]),
        "berlin": Filter(region={"lat": 52.5, "lon": 13.4, "radius_km": 50}),
        "paris": Filter(region={"lat": 48.85, "lon": 2.35, "radius_km": 50}),
        "world": Filter(region={"lat": 0, "lon": 0, "radius_km": 20000}),
        "both": Filter(facility_ids=["f1"], processes=["cnc-milling"]),
    }
    index = RoutingIndex(Route.of(k, v) for k, v in routes.items())
    assert index.route(_event()) == sorted(["all", "fac", "printing", "berlin", "world"])
    assert index.route(_event(type="matches.withdrawn")) == sorted(
        ["all", "fac", "design", "printing", "berlin", "world"])
    assert index.route(_event(facility_lat=None, facility_lon=None, facility_id="f9",
                              design_processes=["cnc-milling"])) == ["all", "milling"]
    index.discard("all")
    index.add(Route.of("fac", Filter(facility_ids=["f9"])))
    assert "all" not in index.route(_event()) and "fac" not in index.route(_event())


def test_unknown_process_in_a_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown process"):
        Filter(processes=["telekinesis"])


def test_a_fault_of_ours_is_retried_for_ever_at_most_five_minutes_apart() -> None:
    from services.notifier.schedule import DEFAULT_SCHEDULE, our_fault_delay

    rng = random.Random(3)
    delays = [our_fault_delay(n, DEFAULT_SCHEDULE, rng) for n in range(1, 50)]
    assert all(d is not None and 0 < d <= 300 for d in delays)
    assert delays[0] < 10  # the schedule's first step, jittered
    assert schedule.next_delay(49, DEFAULT_SCHEDULE) is None  # a subscriber's fault ends


def test_an_alert_email_links_each_design_and_its_manage_page_when_a_web_page_runs() -> None:
    import uuid

    from services.notifier.messages import email

    payload = {"data": {"count": 1, "events": [{"type": "matches.found",
                                                "facility_id": "lab", "design_id": "plate",
                                                "score": 0.9}]}}
    unsubscribe = "http://web.example/v1/email/unsubscribe?token=tok"
    with_pages = email(uuid.uuid4(), "matches", payload, sender="a@b.c", to="m@b.c",
                       unsubscribe=unsubscribe, pages="http://web.example/")
    text = with_pages.get_body(("plain",)).get_content()
    assert "can now make design plate (score 0.90): http://web.example/designs/plate" in text
    assert "Manage this alert: http://web.example/alerts/manage?token=tok" in text
    without = email(uuid.uuid4(), "matches", payload, sender="a@b.c", to="m@b.c",
                    unsubscribe=unsubscribe).get_body(("plain",)).get_content()
    assert "/designs/plate" not in without and "Manage" not in without
