"""Webhook URLs as people type them: a host or path in another script is stored as it goes
on the wire (IDNA host, percent-encoded path and query) and delivered; a host that no
resolver could answer for, and the deprecated site-local IPv6 range, are refused."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from services.notifier.addresses import Refused, normalised_url, why_refused
from tests.support.builders import subscribe, webhook
from tests.support.helpers import eventually, notifier_api, publish_matches
from tests.support.receivers import Receiver


@pytest.mark.parametrize("address", ["fec0::1", "fec0:1234::5", "feff:ffff::1"])
def test_site_local_ipv6_is_refused(address: str) -> None:
    assert why_refused(ipaddress.ip_address(address)) == "site-local address"


@pytest.mark.parametrize(("typed", "stored"), [
    ("http://bücher.example/päth?q=ä", "http://xn--bcher-kva.example/p%C3%A4th?q=%C3%A4"),
    ("https://EXAMPLE.org:443/a%20b", "https://example.org/a%20b"),
    ("https://hooks.example/already%C3%A4/x?token=a%2Fb", None),
    ("http://[2001:db8::1]:8080/in", None),
])
def test_urls_are_stored_as_sent(typed: str, stored: str | None) -> None:
    assert normalised_url(typed) == (stored or typed)
    assert normalised_url(normalised_url(typed)) == normalised_url(typed)  # idempotent


@pytest.mark.parametrize("url", ["http://exa mple.com/", "http://..example/",
                                 "http://\u2024.example/", "http://2130706433/",
                                 "http://127.1/", "http://-lead.example/",
                                 "http://example.com:0/", f"http://{'a' * 64}.example/"])
def test_hosts_that_cannot_be_reached_are_refused(url: str) -> None:
    with pytest.raises(Refused):
        normalised_url(url)


async def test_a_non_ascii_url_is_delivered(notifier_settings: Any, store: Any,
                                            org: tuple[str, str],
                                            receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    port = base.rsplit(":", 1)[1]

    async def resolve(host: str, _port: int) -> list[str]:
        if host == "xn--bcher-kva.test":
            return ["127.0.0.1"]
        raise OSError("NXDOMAIN")

    async with notifier_api(notifier_settings, resolve) as http:
        created = await subscribe(http, org[1], webhook(
            f"http://bücher.test:{port}/päth?für=größe", facility_ids=["fab-idn"]))
        url = f"http://xn--bcher-kva.test:{port}/p%C3%A4th?f%C3%BCr=gr%C3%B6%C3%9Fe"
        assert created["url"] == url
        await publish_matches(notifier_settings.nats_url, [("d-idn", "fab-idn")])

        async def arrived() -> bool:
            return bool(app.at("/päth"))

        await eventually(arrived, timeout=10)
        request = app.at("/päth")[0]
        assert request.headers["host"] == f"xn--bcher-kva.test:{port}"
