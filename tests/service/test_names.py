"""One name and one definition a concept: the entity kind, the match kind and the event
type made of it, the delivery kind and status. Every document a service serves shows each
as the same enum, and the database keeps the values the API shows."""

from __future__ import annotations

import re
import uuid
from typing import Any, get_args, get_type_hints

import asyncpg

from contracts.asyncapi import document
from contracts.events import EntityKind
from contracts.matches import MATCH_EVENT_TYPES, MATCH_KINDS, Reason, Requirement
from contracts.schemas import all_schemas
from services.common import db
from services.notifier.messages import DeliveryKind
from services.notifier.schemas import DeliveryStatus
from services.registry.settings import RegistrySettings

ENTITY_KINDS = ["design", "facility"]


def _apps() -> dict[str, Any]:
    from services.matcher.app import create_app as matcher
    from services.notifier.app import create_app as notifier
    from services.registry.app import create_app as registry

    return {"registry": registry, "matcher": matcher, "notifier": notifier}


def _schemas(document: dict[str, Any]) -> dict[str, Any]:
    return document.get("components", {}).get("schemas") or document.get("$defs") or {}


def test_a_match_event_type_is_matches_and_its_match_kind() -> None:
    assert MATCH_EVENT_TYPES == tuple(f"matches.{kind}" for kind in MATCH_KINDS)


def test_a_reason_is_a_requirement_as_a_tuple() -> None:
    hints = get_type_hints(Reason)
    assert [(f, hints[f]) for f in Reason._fields] == [
        (f, info.annotation) for f, info in Requirement.model_fields.items()]


def test_every_document_shows_the_entity_kind_as_one_enum() -> None:
    assert [k.value for k in EntityKind] == ENTITY_KINDS
    registry = _apps()["registry"]().openapi()
    asyncapi = document("notifier", "nats://127.0.0.1:4222")
    published = all_schemas()
    for where, doc, model, field in (
            ("registry OpenAPI", registry, "Report", "kind"),
            ("notifier AsyncAPI", asyncapi, "Cause", "entity"),
            ("match-change.schema.json", published["match-change.schema.json"], "Cause",
             "entity"),
            ("match-event.schema.json", published["match-event.schema.json"], "Cause",
             "entity")):
        schemas = _schemas(doc)
        assert schemas["EntityKind"]["enum"] == ENTITY_KINDS, where
        assert schemas[model]["properties"][field]["$ref"].endswith("/EntityKind"), where


def test_the_notifier_documents_the_event_types_and_delivery_kinds_it_keeps() -> None:
    schemas = _schemas(_apps()["notifier"]().openapi())
    event_types = schemas["Filter"]["properties"]["event_types"]["items"]
    assert tuple(event_types["enum"]) == MATCH_EVENT_TYPES
    delivery = schemas["Delivery"]["properties"]
    assert tuple(delivery["kind"]["enum"]) == get_args(DeliveryKind)
    assert tuple(delivery["status"]["enum"]) == get_args(DeliveryStatus)


async def test_the_database_keeps_the_delivery_kinds_and_statuses_the_api_shows(
        settings: RegistrySettings) -> None:
    """The notifier's migrations hold their own copy (SQL cannot import a Literal): the
    CHECK constraints of a migrated database allow exactly the values the API shows."""
    schema = f"names_{uuid.uuid4().hex[:8]}"
    await db.migrate(settings.database_url, schema, "services.notifier")
    conn = await asyncpg.connect(settings.database_url)
    try:
        checks = await conn.fetch(
            "SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n"
            " ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relname = 'deliveries'"
            " AND c.contype = 'c'", schema)
        allowed = {}
        for check in checks:
            column = re.search(r"\((\w+) = ANY", check["def"])
            if column:
                allowed[column.group(1)] = set(re.findall(r"'([^']+)'::text", check["def"]))
        assert allowed["kind"] == set(get_args(DeliveryKind))
        assert allowed["status"] == set(get_args(DeliveryStatus))
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
