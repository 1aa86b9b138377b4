"""AsyncAPI 2.6 documents of the events each service publishes and consumes, from the
same pydantic models the events are made with (so they cannot drift).

Why not FastStream's generator: it documents the handlers declared on a FastStream broker,
and our consumers are nats-py pull consumers with explicit acks and checkpoints (see
design notes in the README); the channels and payloads are the same either way."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import TypeAdapter

from contracts.events import REGISTRY_STREAM, DesignEvent, FacilityEvent
from contracts.matches import ENCODING, ENCODING_HEADER, MATCHES_STREAM, MatchChange

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
    "matches.design.{design_id}": {
        "stream": MATCHES_STREAM, "model": MatchChange,
        "description": "The pairs a design change made match (found) or stop matching "
                       "(withdrawn): one message per change, in numbered pieces under the "
                       "server's max_payload. contracts.matches.match_events rebuilds each "
                       "pair with its explanation."},
    "matches.facility.{facility_id}": {
        "stream": MATCHES_STREAM, "model": MatchChange,
        "description": "The same for a facility change."},
}
# What every MATCHES message carries beside its payload.
MATCH_HEADERS = {
    "type": "object", "required": ["Nats-Msg-Id", ENCODING_HEADER],
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "message_id: a replay of the same "
                        "piece has the same, and JetStream drops it"},
        ENCODING_HEADER: {"type": "string", "const": ENCODING,
                          "description": "the payload is the JSON compressed with zlib"}}}

SERVICES: dict[str, dict[str, Direction]] = {
    "registry": {"registry.design.{design_id}": "publishes",
                 "registry.facility.{facility_id}": "publishes"},
    "matcher": {"registry.design.{design_id}": "consumes",
                "registry.facility.{facility_id}": "consumes",
                "matches.design.{design_id}": "publishes",
                "matches.facility.{facility_id}": "publishes"},
    "notifier": {"matches.design.{design_id}": "consumes",
                 "matches.facility.{facility_id}": "consumes"},
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
            "messages": {name: _message(name)
                         for name in {CHANNELS[c]["model"].__name__ for c in SERVICES[service]}},
            "schemas": schemas},
    }


def _message(name: str) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name,
                               "payload": {"$ref": f"#/components/schemas/{name}"}}
    if name == MatchChange.__name__:
        message["headers"] = MATCH_HEADERS
    return message


def _parameters(channel: str) -> list[str]:
    return [part[1:-1] for part in channel.split(".") if part.startswith("{")]
