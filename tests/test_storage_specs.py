"""The storage format's definitions (protocol_specs/storage) and the generator's support for
definition sets of our own: staleness of generated/storage, no API table, our own headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from codegen.__main__ import main as codegen_main
from codegen.render import KAFKA, KAFSCALE, render_all, render_message
from codegen.specs import is_own_specs, load_messages
from generated.storage.segment_footer import SegmentFooter
from generated.storage.segment_header import SegmentHeader
from generated.storage.segment_index import IndexEntry, SegmentIndex
from kafscale.protocol import ProtocolError
from tests.conftest import REPO

SPECS = REPO / "protocol_specs" / "storage"
OUT = REPO / "generated" / "storage"


def test_generated_storage_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    """What `scripts/regen --check` checks, here too: it needs nothing outside the repo."""
    assert codegen_main(["--specs", str(SPECS), "--out", str(OUT), "--check"]) == 0, (
        capsys.readouterr().err
    )


def test_own_definitions_get_no_api_table_and_say_whose_they_are() -> None:
    messages = load_messages(SPECS)
    assert [m.name for m in messages] == ["SegmentFooter", "SegmentHeader", "SegmentIndex"]
    assert all(m.kind == "data" and m.api_key is None for m in messages)
    files = render_all(messages, "protocol_specs/storage", strict=False, vendor=KAFSCALE, jobs=1)
    assert sorted(files) == [
        "__init__.py",
        "segment_footer.py",
        "segment_header.py",
        "segment_index.py",
    ]
    header = files["segment_header.py"]
    assert "KafScale's own" in header and "Apache Kafka's" not in header
    assert "KafScale protocol_specs/storage SegmentHeader.json" in header
    assert "KAFKA_RELEASE" not in files["__init__.py"]
    # Kafka's definitions render as before: the vendor defaults to Kafka.
    kafka = render_message(messages[0], "3.9.1")
    assert render_message(messages[0], "3.9.1", KAFKA) == kafka
    assert "Apache Kafka's (Apache-2.0)" in kafka


def test_own_definitions_are_recognised_by_location(tmp_path: Path) -> None:
    assert is_own_specs(SPECS)
    assert not is_own_specs(tmp_path)
    assert not is_own_specs(REPO.parent / "shared" / "kafka-message-specs" / "3.9.1")


def test_own_definitions_cannot_overwrite_the_kafka_package(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = sorted(p.name for p in (REPO / "generated").glob("*.py"))
    assert codegen_main(["--specs", str(SPECS)]) == 2  # --out defaults to generated/
    assert "subpackage" in capsys.readouterr().err
    assert sorted(p.name for p in (REPO / "generated").glob("*.py")) == before


def test_generating_elsewhere(tmp_path: Path) -> None:
    out = tmp_path / "storage"
    assert codegen_main(["--specs", str(SPECS), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in OUT.iterdir() if p.is_file())
    for p in out.glob("*.py"):
        assert p.read_text() == (OUT / p.name).read_text()


def test_fixed_sizes_and_defaults() -> None:
    header = SegmentHeader(base_offset=5, message_count=2, created_ms=9).encode(0)
    assert len(header) == 32 and header[:8] == b"KAFS\x00\x01\x00\x00"
    footer = SegmentFooter(crc=0xFFFFFFFF, last_offset=6).encode(0)
    assert len(footer) == 16 and footer[-4:] == b"END!"
    index = SegmentIndex(entries=[IndexEntry(offset=1, position=32, max_timestamp=3)]).encode(0)
    assert index[:4] == b"IDX\x01" and len(index) == 40 + 20
    assert SegmentHeader.decode(header, 0).base_offset == 5
    with pytest.raises(ProtocolError):
        SegmentFooter(crc=-1).encode(0)  # uint32 refuses what does not fit
    with pytest.raises(ProtocolError):
        SegmentIndex.decode(index[:-1], 0)


def test_check_reports_stale_storage_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "storage"
    assert codegen_main(["--specs", str(SPECS), "--out", str(out)]) == 0
    (out / "segment_header.py").write_text("# edited by hand\n")
    (out / "leftover.py").write_text("")
    assert codegen_main(["--specs", str(SPECS), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "segment_header.py: differs" in err and "leftover.py: not produced" in err
