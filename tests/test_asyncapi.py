"""The AsyncAPI documents: each service's channels, every reference resolvable, and the
payload schemas those of the models events are made with."""

from __future__ import annotations

from typing import Any

from contracts.asyncapi import SERVICES, document
from contracts.matches import MatchChange


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict, ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_service_documents_its_channels_with_resolvable_payloads() -> None:
    for service, channels in SERVICES.items():
        doc = document(service, "nats://a:4222,nats://b:4222")
        assert doc["asyncapi"] == "2.6.0" and doc["servers"]["nats"]["url"] == "nats://a:4222"
        assert set(doc["channels"]) == set(channels)
        for ref in refs(doc):
            assert resolve(doc, ref) is not None, (service, ref)
        for name, channel in doc["channels"].items():
            assert set(channel["parameters"]) == {p[1:-1] for p in name.split(".")
                                                  if p.startswith("{")}
    matcher = document("matcher", "nats://x:4222")["channels"]
    assert "publish" in matcher["matches.design.{design_id}"]
    assert "publish" in matcher["matches.facility.{facility_id}"]
    assert "subscribe" in matcher["registry.facility.{facility_id}"]
    notifier = document("notifier", "nats://x:4222")["components"]
    schema = notifier["schemas"]["MatchChange"]
    assert set(schema["required"]) == {n for n, f in MatchChange.model_fields.items()
                                       if f.is_required()}
    assert notifier["messages"]["MatchChange"]["headers"]["properties"][
        "Content-Encoding"]["const"] == "deflate"
