"""Random valid objects of every message at every valid version survive encode -> decode, and
the generated codec agrees byte for byte with the interpreted reference codec.

One test per (message, version) pair (666 of them in 3.9.1). The example count per pair is
small (``KAFSCALE_ROUNDTRIP_EXAMPLES``, default 5) so the whole module stays fast; raise it
for a deeper run: ``KAFSCALE_ROUNDTRIP_EXAMPLES=200 pytest tests/test_roundtrip_hypothesis.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated import registry
from kafscale.protocol.message import Message
from kafscale.protocol.reference import reference_read, reference_write
from tests.strategies import all_message_versions, filled_message, json_round_trip, messages

EXAMPLES = int(os.environ.get("KAFSCALE_ROUNDTRIP_EXAMPLES", "5"))
PAIRS = all_message_versions()


def check_round_trip(obj: Message, version: int, *, json: bool = True) -> None:
    cls = type(obj)
    data = obj.encode(version)
    chunks = obj.encode_chunks(version)
    assert b"".join(chunks) == data
    assert reference_write(obj, version) == data, "generated and reference encoders differ"

    decoded = cls.decode(data, version)
    assert decoded == obj
    assert decoded.encode(version) == data

    ref, end = reference_read(cls, data, version)
    assert end == len(data)
    assert ref == decoded, "generated and reference decoders differ"

    if json:  # the JSON form loses nothing either (with and without the version filter)
        assert json_round_trip(decoded) == decoded
        assert json_round_trip(decoded, version) == decoded


def test_pair_count() -> None:
    """Every message of the registry has a class whose valid versions are non-empty, and the
    parametrization below covers exactly those pairs."""
    assert len(registry.MESSAGES) == 186
    names = {name for name, _ in PAIRS}
    assert names == set(registry.MESSAGES)
    assert len(PAIRS) == sum(
        hi - lo + 1
        for lo, hi in (registry.message_class(n).VALID_VERSIONS for n in registry.MESSAGES)
    )


@pytest.mark.parametrize(("name", "version"), PAIRS, ids=[f"{n}-v{v}" for n, v in PAIRS])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_round_trip(name: str, version: int, data: st.DataObject) -> None:
    cls = registry.message_class(name)
    obj = data.draw(messages(cls, version), label=name)
    check_round_trip(obj, version)


def test_default_objects_round_trip_everywhere() -> None:
    """A default-constructed object is valid in every version (defaults are never an error)."""
    for name, version in PAIRS:
        cls = registry.message_class(name)
        check_round_trip(cls(), version)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param({}, id="small"),
        # Past the one-byte varint (127) and the precompiled small-array (32) fast paths, long
        # strings, and an unknown tag in every struct of the flexible versions.
        pytest.param(
            {
                "array_len": 130,
                "struct_array_len": 1,
                "top_struct_array_len": 128,
                "text_len": 20,
                "unknown": True,
            },
            id="large",
        ),
    ],
)
def test_filled_objects_round_trip(sizes: dict[str, Any]) -> None:
    """Every field that exists in a version set to a non-default value: nothing is dropped,
    and both codecs agree, for every message and version."""
    for name, version in PAIRS:
        obj = filled_message(registry.message_class(name), version, **sizes)
        check_round_trip(obj, version, json=not sizes)
