"""`makelocal import` over the shared data, end to end through the registry's API."""

from __future__ import annotations

from pathlib import Path

import pytest

from makelocal.importer import import_paths
from tests.support.helpers import InProcess, eventually, stream_messages

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_importing_the_shared_data_twice_creates_nothing_the_second_time(
        registry: InProcess, org: tuple[str, str], data_dir: Path) -> None:
    first = await import_paths([data_dir], registry_url=registry.url, api_key=org[1],
                               progress=False)
    assert first.counts["created"] == 3 + 138 + 1291 + 10
    reasons = sorted({reason.split(" (")[0] for _, reason in first.rejected})
    assert first.counts["rejected"] == 8 + 2
    # the two machine catalogues describe models, not facilities
    assert reasons == ["machine row names no facility", "unknown layout"]
    assert any("no coordinates" in w for _, w in first.warnings)

    async def all_events() -> list:
        messages = await stream_messages(registry.settings.nats_url)
        return messages if len(messages) == first.counts["created"] else []

    before = await eventually(all_events, timeout=60)
    second = await import_paths([data_dir], registry_url=registry.url, api_key=org[1],
                                progress=False)
    assert second.counts["unchanged"] == first.counts["created"]
    assert second.counts["created"] == second.counts["updated"] == 0
    after = await stream_messages(registry.settings.nats_url)
    assert [m["_seq"] for m in after] == [m["_seq"] for m in before]


async def test_a_changed_file_is_an_update(registry: InProcess, org: tuple[str, str],
                                           tmp_path: Path, data_dir: Path) -> None:
    manifest = tmp_path / "plankto.okh.toml"
    original = (data_dir / "okh" / "planktoscope.okh.toml").read_text()
    manifest.write_text(original)
    first = await import_paths([tmp_path], registry_url=registry.url, api_key=org[1],
                               progress=False)
    assert first.counts["created"] == 1
    manifest.write_text(original.replace('version = "2.5"', 'version = "2.6"'))
    second = await import_paths([manifest], registry_url=registry.url, api_key=org[1],
                                progress=False)
    assert second.counts["updated"] == 1


async def test_malformed_files_are_rejected_with_their_reason(
        registry: InProcess, org: tuple[str, str], tmp_path: Path) -> None:
    (tmp_path / "broken.okh.toml").write_text('name = "x\n')
    (tmp_path / "lab.json").write_text('{"name": "Lab", "facility_status": "Someday"}')
    summary = await import_paths([tmp_path], registry_url=registry.url, api_key=org[1],
                                 progress=False)
    reasons = dict(summary.rejected)
    assert summary.counts["rejected"] == 2
    assert "malformed TOML" in reasons[str(tmp_path / "broken.okh.toml")]
    assert "(facility_status)" in reasons[str(tmp_path / "lab.json")]
