"""Registry change events: the envelope, the stream and the subjects."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.models import Design, EntityId, Facility

SCHEMA_VERSION = 1
REGISTRY_STREAM = "REGISTRY"
REGISTRY_SUBJECTS = "registry.>"
# JetStream forgets a Nats-Msg-Id after this window; a relay that republishes later
# (after a crash between PubAck and marking the row) would duplicate. 20 min covers any
# restart we plan for; consumers also ignore versions they already have.
REGISTRY_DUPLICATE_WINDOW_S = 20 * 60


class EntityKind(StrEnum):
    """What a registry entity is: the one definition every service, reader, event, subject
    and document uses (its values are the subjects' and the JSON's)."""

    design = "design"
    facility = "facility"


def design_partition_transform(partitions: int) -> tuple[str, str] | None:
    """(source, destination) of the REGISTRY subject transform that puts each design
    event under its partition: registry.design.<id> -> registry.design.<p>.<id>."""
    if partitions <= 1:
        return None
    return ("registry.design.*",
            f"registry.design.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}")


_PARTITION_FUNCTION = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*,")


def partitions_of(transform_destination: str | None) -> int:
    """The number of partitions a REGISTRY stream's subject transform (the destination
    design_partition_transform makes) spreads design events over; none: 1. The stream's
    configuration is where the registry records its partition count: it is what routes."""
    found = _PARTITION_FUNCTION.search(transform_destination or "")
    return int(found.group(1)) if found else 1


def partition_filters(partitions: int, partition: int) -> list[str]:
    """What one matcher partition consumes: every facility, its share of the designs."""
    if partitions <= 1:
        return [REGISTRY_SUBJECTS]
    return ["registry.facility.*", f"registry.design.{partition}.*"]


def subject_for(kind: EntityKind, entity_id: str) -> str:
    """Ids are [A-Za-z0-9_-], so they are safe as a single subject token."""
    return f"registry.{kind.value}.{entity_id}"


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: uuid.UUID
    subject: str
    entity_id: EntityId
    version: int = Field(ge=1, description="entity version after this change")
    occurred_at: datetime
    owner: str | None = Field(None, description="id of the organization that owns the entity")


class DesignEvent(_Envelope):
    type: Literal["design.upserted", "design.deleted"]
    data: Design | None = Field(description="the normalized design; null when deleted")


class FacilityEvent(_Envelope):
    type: Literal["facility.upserted", "facility.deleted"]
    data: Facility | None = Field(description="the normalized facility; null when deleted")


RegistryEvent = Annotated[DesignEvent | FacilityEvent, Field(discriminator="type")]


def new_event(
    kind: EntityKind,
    *,
    entity_id: str,
    version: int,
    owner: str | None,
    data: Design | Facility | None,
) -> DesignEvent | FacilityEvent:
    """The event for one committed change; `data` None means the entity was deleted."""
    suffix = "deleted" if data is None else "upserted"
    cls = DesignEvent if kind is EntityKind.design else FacilityEvent
    return cls(
        event_id=uuid.uuid4(),
        type=f"{kind.value}.{suffix}",  # type: ignore[arg-type]
        subject=subject_for(kind, entity_id),
        entity_id=entity_id,
        version=version,
        occurred_at=datetime.now(UTC),
        owner=owner,
        data=data,  # type: ignore[arg-type]
    )
