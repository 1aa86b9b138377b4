"""AsyncAPI 2.6 documents of the events each service publishes and consumes, from the
same pydantic models the events are made with (so they cannot drift).

Why not FastStream's generator: it documents the handlers declared on a FastStream broker,
and our consumers are nats-py pull consumers with explicit acks and checkpoints (see
design notes in the README); the channels and payloads are the same either way."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import TypeAdapter

from contracts.events import REGISTRY_STREAM, DesignEvent, FacilityEvent
from contracts.matches import MATCHES_STREAM, MatchEvent

Direction = Literal["publishes", "consumes"]

CHANNELS: dict[str, dict[str, Any]] = {
    "registry.design.{design_id}": {
        "stream": REGISTRY_STREAM, "model": DesignEvent,
        "description": "Every design change (upsert or delete), latest per design kept. "
                       "With MAKELOCAL_PARTITIONS=N the subject is "
                       "registry.design.{partition}.{design_id}."},
    "registry.facility.{facility_id}": {
        "stream": REGISTRY_STREAM, "model": FacilityEvent,
        "description": "Every facility change (upsert or delete), latest per facility kept."},
    "matches.{kind}.{design_id}.{facility_id}": {
        "stream": MATCHES_STREAM, "model": MatchEvent,
        "description": "A pair that matches now and did not before (kind found), or matched "
                       "and no longer does (kind withdrawn). Nats-Msg-Id is the event_id."},
}

SERVICES: dict[str, dict[str, Direction]] = {
    "registry": {"registry.design.{design_id}": "publishes",
                 "registry.facility.{facility_id}": "publishes"},
    "matcher": {"registry.design.{design_id}": "consumes",
                "registry.facility.{facility_id}": "consumes",
                "matches.{kind}.{design_id}.{facility_id}": "publishes"},
    "notifier": {"matches.{kind}.{design_id}.{facility_id}": "consumes"},
}


def document(service: str, nats_url: str) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for channel, direction in SERVICES[service].items():
        spec = CHANNELS[channel]
        name = spec["model"].__name__
        schema = TypeAdapter(spec["model"]).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        # AsyncAPI 2 names operations from the application's side: it "subscribes" to
        # what it consumes and "publishes" what it publishes
        operation = "publish" if direction == "publishes" else "subscribe"
        channels[channel] = {
            "description": spec["description"],
            "parameters": {p: {"schema": {"type": "string"}} for p in _parameters(channel)},
            "bindings": {"nats": {"bindingVersion": "0.1.0"}},
            operation: {"operationId": f"{service}_{direction}_{name}",
                        "message": {"$ref": f"#/components/messages/{name}"}},
            "x-jetstream-stream": spec["stream"],
        }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": f"makelocal {service}", "version": "1",
                 "description": f"Events the {service} publishes and consumes."},
        "servers": {"nats": {"url": nats_url.split(",")[0], "protocol": "nats"}},
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {
            "messages": {name: {"name": name, "payload": {"$ref": f"#/components/schemas/{name}"}}
                         for name in {CHANNELS[c]["model"].__name__ for c in SERVICES[service]}},
            "schemas": schemas},
    }


def _parameters(channel: str) -> list[str]:
    return [part[1:-1] for part in channel.split(".") if part.startswith("{")]
