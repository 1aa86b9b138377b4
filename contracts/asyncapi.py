"""AsyncAPI 3.0 documents of the events each service sends and receives, from the same
pydantic models the events are made with (so they cannot drift). tests/service/test_asyncapi.py
checks every document with the AsyncAPI project's own parser (@asyncapi/parser).

AsyncAPI 3 names each operation from the service's side: `send` what it publishes to NATS,
`receive` what it consumes. (AsyncAPI 2's `publish` meant the opposite: what others may
publish to the service, i.e. what it receives.)

Why not FastStream's generator: it documents the handlers declared on a FastStream broker,
and our consumers are nats-py pull consumers with explicit acks and checkpoints (see
design notes in the README); the channels and payloads are the same either way."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, TypeAdapter

from contracts.events import REGISTRY_STREAM, DesignEvent, FacilityEvent
from contracts.matches import (
    ENCODING,
    ENCODING_HEADER,
    MATCHES_STREAM,
    MESSAGE_ID_PATTERN,
    MatchChange,
)

VERSION = "3.0.0"
Action = Literal["send", "receive"]

_ID = "An entity id ([A-Za-z0-9_-]): one subject token."
CHANNELS: dict[str, dict[str, Any]] = {
    "registryDesign": {
        "address": "registry.design.{design_id}", "stream": REGISTRY_STREAM,
        "model": DesignEvent,
        "parameters": {"design_id": "The design's id. " + _ID},
        "description": "Every design change (upsert or delete), latest per design kept. "
                       "With MAKELOCAL_PARTITIONS=N the REGISTRY stream's subject transform "
                       "stores it as registry.design.{partition}.{design_id}, and each "
                       "matcher partition receives registry.design.<its partition>.*."},
    "registryFacility": {
        "address": "registry.facility.{facility_id}", "stream": REGISTRY_STREAM,
        "model": FacilityEvent,
        "parameters": {"facility_id": "The facility's id. " + _ID},
        "description": "Every facility change (upsert or delete), latest per facility "
                       "kept."},
    "matchesDesign": {
        "address": "matches.design.{design_id}", "stream": MATCHES_STREAM,
        "model": MatchChange,
        "parameters": {"design_id": "The changed design's id. " + _ID},
        "description": "The pairs a design change made match (found) or stop matching "
                       "(withdrawn): one message per change, in numbered pieces under the "
                       "server's max_payload. contracts.matches.match_events rebuilds each "
                       "pair with its explanation."},
    "matchesFacility": {
        "address": "matches.facility.{facility_id}", "stream": MATCHES_STREAM,
        "model": MatchChange,
        "parameters": {"facility_id": "The changed facility's id. " + _ID},
        "description": "The same for a facility change (one set of pieces from each "
                       "matcher partition)."},
}

# The NATS headers the services set on each message, as AsyncAPI message headers.
_MSG_ID = "Nats-Msg-Id"
HEADERS: dict[type[BaseModel], dict[str, Any]] = {
    model: {"type": "object", "required": [_MSG_ID], "properties": {_MSG_ID: {
        "type": "string", "format": "uuid",
        "description": "event_id: the relay republishes an event under the same id, and "
                       "JetStream drops the copy within its duplicate window"}}}
    for model in (DesignEvent, FacilityEvent)
}
HEADERS[MatchChange] = {
    "type": "object", "required": [_MSG_ID, ENCODING_HEADER],
    "properties": {
        _MSG_ID: {"type": "string", "pattern": MESSAGE_ID_PATTERN,
                  "description": "message_id: a replay of the same piece has the same, and "
                                 "JetStream drops it"},
        ENCODING_HEADER: {"type": "string", "const": ENCODING,
                          "description": "the payload is the JSON compressed with zlib"}}}

# W3C trace context, on every message when tracing is on (services.common.tracing): the
# span of the work that sent it, so the receiver's work joins the same trace
_TRACE = {
    "traceparent": {"type": "string",
                    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                    "description": "W3C Trace Context: the sender's span; only when the "
                                   "sender traces (an OTLP endpoint is configured)"},
    "tracestate": {"type": "string", "description": "W3C Trace Context vendor state, "
                                                    "with traceparent, when there is one"},
}
for _headers in HEADERS.values():
    _headers["properties"].update(_TRACE)

SERVICES: dict[str, dict[str, Action]] = {
    "registry": {"registryDesign": "send", "registryFacility": "send"},
    "matcher": {"registryDesign": "receive", "registryFacility": "receive",
                "matchesDesign": "send", "matchesFacility": "send"},
    "notifier": {"matchesDesign": "receive", "matchesFacility": "receive"},
}


def document(service: str, nats_url: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `service`, with a server for each NATS URL in
    `nats_url` (comma-separated, as MAKELOCAL_NATS_URL; any credentials left out)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for channel_id, action in SERVICES[service].items():
        spec = CHANNELS[channel_id]
        model: type[BaseModel] = spec["model"]
        name = model.__name__
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        messages[name] = _message(model)
        channels[channel_id] = {
            "address": spec["address"],
            "description": spec["description"],
            "parameters": {p: {"description": d} for p, d in spec["parameters"].items()},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-jetstream-stream": spec["stream"],
        }
        operations[action + channel_id[0].upper() + channel_id[1:]] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": (f"The {service} {'publishes' if action == 'send' else 'consumes'} "
                        f"{name} messages on {spec['address']} (stream {spec['stream']})."),
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{name}"}],
        }
    return {
        "asyncapi": VERSION,
        "info": {"title": f"makelocal {service}", "version": "1",
                 "description": f"The NATS JetStream messages the {service} sends and "
                                "receives.",
                 "license": {"name": "Apache-2.0",
                             "url": "https://www.apache.org/licenses/LICENSE-2.0"}},
        "defaultContentType": "application/json",
        "servers": servers(nats_url),
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def servers(nats_url: str) -> dict[str, Any]:
    """One server a URL: "nats" the first, "nats-2", "nats-3"... the others; host and port
    only (a URL's user and password never reach a served document)."""
    out: dict[str, Any] = {}
    for n, url in enumerate(u.strip() for u in nats_url.split(",") if u.strip()):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"  # IPv6
        out["nats" if n == 0 else f"nats-{n + 1}"] = {
            "host": f"{host}:{parts.port or 4222}", "protocol": "nats",
            "description": "A NATS JetStream server" + (" (TLS)" if parts.scheme == "tls"
                                                        else "") + "."}
    return out


def _message(model: type[BaseModel]) -> dict[str, Any]:
    name = model.__name__
    message: dict[str, Any] = {
        "name": name, "title": name, "contentType": "application/json",
        "headers": HEADERS[model],
        "payload": {"$ref": f"#/components/schemas/{name}"}}
    if model.__doc__:
        message["description"] = " ".join(model.__doc__.split())
    return message
