"""The SSRF probe set, against a running notifier that allows no private range (as in
production): every spelling of a loopback, private, link-local or metadata address, names
that resolve to them, a name that turns private between registration and delivery, and a
public receiver that redirects inward. Each is refused and counted in the metrics.

Names under .test (reserved, RFC 2606) are answered by the test's resolver, the one
boundary replaced; numeric spellings go through the system resolver, which is what turns
`2130706433` or `0177.0.0.1` into 127.0.0.1 in production too."""

from __future__ import annotations

from typing import Any

import httpx

from services.notifier.guard import system_resolver
from tests.conftest import auth
from tests.support.builders import subscribe, webhook
from tests.support.helpers import InProcess, eventually, metric, publish_matches, wait_ready
from tests.support.receivers import Receiver

NAMES = {"metadata.test": ["169.254.169.254"], "intranet.test": ["10.0.0.7"],
         "ula.test": ["fd00::7"], "cgnat.test": ["100.64.3.2"],
         "split.test": ["93.184.216.34", "192.168.0.9"]}

PROBES = [
    # literal IPv4
    "http://127.0.0.1/", "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/", "http://0.0.0.0/",
    # literal IPv6 and IPv4 inside IPv6
    "http://[::1]/", "http://[fe80::1]/", "http://[fd12:3456::1]/", "http://[::]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/",
    "http://[0:0:0:0:0:ffff:10.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:a00:1::]/",
    # decimal, octal, hexadecimal and short forms
    "http://2130706433/", "http://2852039166/", "http://0177.0.0.1/", "http://017700000001/",
    "http://0x7f000001/", "http://0x7f.0.0.1/", "http://127.1/", "http://0xa9.0xfe.0xa9.0xfe/",
    # names resolving inward, one public and one private answer, no answer at all
    "http://localhost:8080/", "http://metadata.test/", "http://intranet.test/",
    "https://ula.test/", "http://cgnat.test/", "http://split.test/", "http://nowhere.test/",
]


def resolver_with(answers: dict[str, Any]) -> Any:
    """The test names' answers (a list, or a function of the call count); any other name
    goes to the system resolver."""
    calls: dict[str, int] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if not host.endswith(".test"):
            return await system_resolver(host, port)
        calls[host] = calls.get(host, 0) + 1
        answer = answers.get(host)
        if answer is None:
            raise OSError("NXDOMAIN")
        return answer(calls[host]) if callable(answer) else answer

    return resolve


async def first_attempt_of(http: httpx.AsyncClient, key: str, url: str, facility: str,
                           nats_url: str) -> dict[str, Any]:
    """Subscribe `url` to one facility's matches, publish one, and return the first
    attempt the delivery log shows."""
    created = await subscribe(http, key, webhook(url, facility_ids=[facility]))
    await publish_matches(nats_url, [(f"d-{facility}", facility)])

    async def first() -> dict[str, Any] | None:
        items = (await http.get(f"/v1/subscriptions/{created['id']}/deliveries",
                                headers=auth(key))).json()["items"]
        return items[0]["attempts_log"][0] if items and items[0]["attempts_log"] else None

    return await eventually(first)


def _no_private_ranges(notifier_settings: Any) -> Any:
    return notifier_settings.model_copy(update={"notifier_allow_cidrs": ""})


async def test_every_probe_is_refused_at_registration_and_counted(
        notifier_settings: Any, store: Any, org: tuple[str, str]) -> None:
    from services.notifier.app import create_app

    settings = _no_private_ranges(notifier_settings)
    async with InProcess(create_app(settings, resolver_with(NAMES)), settings) as notifier, \
            httpx.AsyncClient(base_url=notifier.url, timeout=20) as http:
        await wait_ready(notifier.url)
        accepted = []
        for url in PROBES:
            response = await http.post("/v1/subscriptions", headers=auth(org[1]),
                                       json={"channel": "webhook", "url": url})
            error = response.json().get("error") or {}
            if response.status_code != 422 or error.get("field") != "url":
                accepted.append((url, response.status_code, response.text[:200]))
        assert accepted == []
        listed = await http.get("/v1/subscriptions", headers=auth(org[1]))
        assert listed.json()["items"] == []
        assert await metric(http, "makelocal_notifier_ssrf_blocked_total") == len(PROBES)


async def test_a_name_that_turns_private_after_registration_is_refused_at_delivery(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    """DNS rebinding: public when the subscription is made, loopback (where a receiver
    listens) when the webhook goes. The attempt connects to nothing."""
    from services.notifier.app import create_app

    app, base = receiver
    port = int(base.rsplit(":", 1)[1])
    names = {"rebind.test": lambda n: ["93.184.216.34"] if n == 1 else ["127.0.0.1"]}
    settings = _no_private_ranges(notifier_settings)
    async with InProcess(create_app(settings, resolver_with(names)), settings) as notifier, \
            httpx.AsyncClient(base_url=notifier.url, timeout=20) as http:
        await wait_ready(notifier.url)
        attempt = await first_attempt_of(http, org[1], f"http://rebind.test:{port}/ok",
                                         "fab-r", settings.nats_url)
        assert attempt["status_code"] == 0
        assert attempt["error"].startswith("refused: ")
        assert app.at("/ok") == []
        assert await metric(http, "makelocal_notifier_ssrf_blocked_total") >= 1


async def test_a_redirect_inward_is_not_followed(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    """A receiver the operator allowed (loopback here) answers 302 to the metadata
    address: the attempt fails as a 3xx and nothing follows the Location."""
    from services.notifier.app import create_app

    app, base = receiver
    async with InProcess(create_app(notifier_settings), notifier_settings) as notifier, \
            httpx.AsyncClient(base_url=notifier.url, timeout=20) as http:
        await wait_ready(notifier.url)
        attempt = await first_attempt_of(http, org[1], f"{base}/redirect-inward", "fab-3xx",
                                         notifier_settings.nats_url)
        assert attempt["status_code"] == 302
        assert len(app.at("/redirect-inward")) >= 1
        assert [r for r in app.requests if r.path != "/redirect-inward"] == []
