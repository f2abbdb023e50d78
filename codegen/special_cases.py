"""The protocol's special cases, in one table, each with the KIP (or Kafka source) behind it.

The message definitions do not say everything: a few header versions are fixed by hand in
Kafka's ``ApiMessageType`` and ``RequestHeader``, and the broker must answer an ApiVersions
request it cannot parse. Code that needs one of these consults this table (the generated
registry carries it), never a scattered ``if``.
"""

from __future__ import annotations

from dataclasses import dataclass

from codegen.model import MAX_VERSION, Versions


@dataclass(frozen=True)
class SpecialCase:
    key: str  # stable identifier used by code that applies the case
    api_key: int | None
    versions: Versions
    rule: str
    source: str  # KIP or Kafka source that defines the behaviour


SPECIAL_CASES: tuple[SpecialCase, ...] = (
    SpecialCase(
        "api_versions_response_header_v0",
        18,
        Versions(0, MAX_VERSION),
        "ApiVersionsResponse always uses response header v0 (no tag section), even in flexible "
        "versions, so a client can read the answer to a version the broker does not know.",
        "KIP-511",
    ),
    SpecialCase(
        "controlled_shutdown_v0_request_header_v0",
        7,
        Versions(0, 0),
        "ControlledShutdownRequest v0 uses request header v0 (no ClientId).",
        "Kafka ApiMessageType.requestHeaderVersion (pre-KIP, Kafka 0.8.2)",
    ),
    SpecialCase(
        "request_header_client_id_not_compact",
        None,
        Versions(0, MAX_VERSION),
        "RequestHeader.ClientId stays an int16-length string in flexible header v2 "
        '(flexibleVersions "none" on the field), so any broker can read any header.',
        "KIP-482",
    ),
    SpecialCase(
        "api_versions_unsupported_fallback",
        18,
        Versions(0, MAX_VERSION),
        "An ApiVersionsRequest of a version the broker does not know is not parsed: the broker "
        "answers as v0 with UNSUPPORTED_VERSION (35) and its API list, and the client retries "
        "with a version both sides know.",
        "KIP-511",
    ),
)


def _applies(key: str, api_key: int, version: int) -> bool:
    return any(
        c.key == key and c.api_key == api_key and version in c.versions for c in SPECIAL_CASES
    )


def request_header_version(api_key: int, version: int, flexible: bool) -> int:
    """Request header version of an API version: 2 if flexible, else 1 (KIP-482), bar the table."""
    if _applies("controlled_shutdown_v0_request_header_v0", api_key, version):
        return 0
    return 2 if flexible else 1


def response_header_version(api_key: int, version: int, flexible: bool) -> int:
    """Response header version of an API version: 1 if flexible, else 0, bar the table."""
    if _applies("api_versions_response_header_v0", api_key, version):
        return 0
    return 1 if flexible else 0
