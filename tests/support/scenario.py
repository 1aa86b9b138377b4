"""A scenario both the cluster test and the chaos run drive: a steady stream of registry
changes in phases, and what one clean matcher makes of them (the expected match events),
and what a webhook receiver got."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import asyncpg
import httpx
import orjson
from standardwebhooks import Webhook

from contracts.matches import match_event_id
from services.matcher.diff import apply_design, apply_facility
from services.matcher.index import CapabilityIndex
from services.matcher.profiles import design_profile, facility_profile
from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import JSON
from tests.support.receivers import Receiver

PROCESSES = [["FDM"], ["laser cutting"], ["FDM", "laser cutting"], ["CNC milling", "FDM"],
             ["CNC milling"]]
TSDC = [["3DP"], ["LAS"], ["3DP", "LAS"], ["CNC"], ["3DP", "CNC"]]


class Load:
    """Writes through the registries in turn, one at a time, a little apart: a steady
    stream of changes in phases (facilities, designs, facility edits, design edits).

    `patient` (for chaos): a write that meets a dead registry or database is tried again
    until it is acknowledged. A write whose answer was lost may have landed: trying it
    again then meets 409, 412 or 404, and the entity's current version says whether it
    did. `acknowledged` holds each entity's last acknowledged version (0: deleted)."""

    def __init__(self, http: httpx.AsyncClient, key: dict[str, str],
                 registries: list[str], *, patient: bool = False) -> None:
        self.http, self.key, self.registries, self.patient = http, key, registries, patient
        self.etags: dict[str, str] = {}
        self.acknowledged: dict[str, int] = {}
        self.writes = 0  # acknowledged writes
        self.retries = 0
        self.rng = random.Random(5)
        self.n = 0
        self.facility_numbers: list[int] = []
        self.design_numbers: list[int] = []
        self.changes: dict[str, int] = {}

    async def _write(self, method: str, path: str, body: bytes | None = None,
                     etag: str | None = None) -> None:
        entity = path.split("?id=")[-1].rsplit("/", 1)[-1]
        headers = self.key | JSON | ({"If-Match": etag} if etag else {})
        lost = False  # an earlier try's answer was lost: it may have landed
        deadline = asyncio.get_running_loop().time() + 180
        while True:
            self.n += 1
            url = self.registries[self.n % len(self.registries)] + path
            try:
                answer = await self.http.request(method, url, headers=headers, content=body)
            except httpx.TransportError:
                if not self.patient or asyncio.get_running_loop().time() > deadline:
                    raise
                lost, self.retries = True, self.retries + 1
                await asyncio.sleep(0.2)
                continue
            if answer.status_code in (200, 201):
                version = 0 if method == "DELETE" else int(answer.headers["ETag"].strip('"'))
                break
            if self.patient and lost and answer.status_code in (404, 409, 412):
                try:
                    landed = await self._landed(path, method, etag)
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
                    continue
                if landed is not None:
                    version = landed
                    break
            if self.patient and answer.status_code >= 500 and (
                    asyncio.get_running_loop().time() < deadline):
                self.retries += 1
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"{method} {path}: {answer.status_code} {answer.text}")
        self.writes += 1
        self.acknowledged[entity] = version
        if method != "DELETE":
            self.etags[entity] = f'"{version}"'
        await asyncio.sleep(0.05)

    async def _landed(self, path: str, method: str, etag: str | None) -> int | None:
        """The version a lost write left, when it did land."""
        item = path.split("?id=")[0] + "/" + path.split("?id=")[1] if "?id=" in path else path
        answer = await self.http.get(self.registries[0] + item, headers=self.key)
        if method == "DELETE":
            return 0 if answer.status_code == 404 else None
        if answer.status_code != 200:
            return None
        version = int(answer.headers["ETag"].strip('"'))
        expected = 1 if etag is None else int(etag.strip('"')) + 1
        return version if version == expected else None

    async def facilities(self, numbers: range) -> None:
        for i in numbers:
            await self._write("POST", f"/v1/facilities?id=lab-{i}",
                              facility_doc(f"Lab {i}", PROCESSES[i % len(PROCESSES)],
                                  lat=40 + i * 0.1, lon=2.0))
            self.facility_numbers.append(i)

    async def designs(self, numbers: range) -> None:
        for i in numbers:
            await self._write("POST", f"/v1/designs?id=design-{i}",
                              design_doc(f"Design {i}", TSDC[i % len(TSDC)]))
            self.design_numbers.append(i)

    async def change_facilities(self, count: int, among: list[int] | None = None) -> None:
        """`count` facilities (of `among`, else of all), each changed once: moved to
        other processes, every other one closed (or opened again)."""
        for i in self.rng.sample(self.facility_numbers if among is None else among, count):
            k = self._changed(f"lab-{i}")
            status = "Closed" if (i + k) % 2 == 0 else "Active"
            await self._write("PUT", f"/v1/facilities/lab-{i}",
                              facility_doc(f"Lab {i}", PROCESSES[(i + k) % len(PROCESSES)],
                                  status=status, lat=40 + i * 0.1, lon=2.0),
                              self.etags[f"lab-{i}"])

    async def change_designs(self, count: int, among: list[int] | None = None) -> None:
        """`count` designs (of `among`, else of all), each changed once: every third
        deleted, the others changed."""
        for i in self.rng.sample(self.design_numbers if among is None else among, count):
            if i % 3 == 0:
                await self._write("DELETE", f"/v1/designs/design-{i}",
                                  etag=self.etags[f"design-{i}"])
                self.design_numbers.remove(i)
            else:
                k = self._changed(f"design-{i}")
                await self._write("PUT", f"/v1/designs/design-{i}",
                                  design_doc(f"Design {i}", TSDC[(i + 1 + k) % len(TSDC)]),
                                  self.etags[f"design-{i}"])

    def _changed(self, entity: str) -> int:
        """How many times `entity` has been changed, this one included."""
        self.changes[entity] = self.changes.get(entity, 0) + 1
        return self.changes[entity]


async def expected_events(database_url: str, schema: str) -> list[str]:
    """The match events one matcher makes of the same input: the registry's outbox, in
    its order (REGISTRY's), through the index, as the consumer applies it."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f'SELECT position, payload FROM "{schema}"'
                                ".outbox ORDER BY position")
    finally:
        await conn.close()
    index = CapabilityIndex()
    out = []
    for row in rows:
        event = orjson.loads(row["payload"])
        kind = event["type"].split(".", 1)[0]
        data, version = event["data"], event["version"]
        make = design_profile if kind == "design" else facility_profile
        new = None if data is None else make(data, version)
        diff = (apply_design if kind == "design" else apply_facility)(
            index, event["entity_id"], new, version)  # type: ignore[arg-type]
        for t in diff.transitions(index):
            event_id = match_event_id(t.kind, t.design_id, t.design_version, t.facility_id,
                                      t.facility_version)
            out.append(event_id)
            DESCRIBED[event_id] = (
                f"{t.kind} {t.design_id}@{t.design_version} {t.facility_id}@"
                f"{t.facility_version} (cause {kind} {event['entity_id']}@{version})")
    return out


DESCRIBED: dict[str, str] = {}


def delivered_events(app: Receiver, secret: str, path: str = "/ok") -> dict[str, set[str]]:
    """Each match event received at `path` -> the webhook ids of the deliveries that
    carried it. A delivery sent again (a notifier killed before it recorded the answer)
    keeps its id and its body."""
    verify = Webhook(secret)
    bodies: dict[str, bytes] = {}
    carried: dict[str, set[str]] = defaultdict(set)
    for request in list(app.at(path)):
        payload = verify.verify(request.body, request.headers)
        assert bodies.setdefault(request.webhook_id, request.body) == request.body
        for event in payload["data"]["events"]:
            carried[event["event_id"]].add(request.webhook_id)
    return carried
