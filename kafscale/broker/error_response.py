"""The error answer to a request whose handler failed, for any API (Kafka's
``AbstractRequest.getErrorResponse``).

Kafka answers a request it could not process with that API's response carrying an error code
(UNKNOWN_SERVER_ERROR for an unexpected exception) and keeps the connection; closing it instead
makes clients reconnect and retry blindly, and for some requests (a JoinGroup, an EndTxn) lose
track of where they were. Kafka writes one ``getErrorResponse`` per request class; the shape is
regular enough that one rule built on the generated field tables covers every API:

- a response with a top-level ``ErrorCode`` (at the version) carries the error there;
- otherwise the response's entities mirror the request's: each array of structs that holds an
  error code somewhere gets one element per element of the request's matching array (same name,
  else the one whose key fields overlap most), with the key fields copied (a topic's name or
  id, a partition index, a resource, a group id) and every error code set. An array of plain
  keys in the request (``PartitionIndexes``, ``GroupsNames``, ``CoordinatorKeys``) fills the
  first field of that type in the response's elements.

``tests/test_error_response.py`` checks every served API and version.
"""

from __future__ import annotations

from typing import Any

from kafscale.protocol.message import FieldSpec, Message, Struct, in_range

# Field names that name the same key in a request and in its response.
_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"name", "topic", "topic_name"}),
    frozenset({"partition_index", "partition", "index", "partition_id"}),
    frozenset({"group_id", "key"}),
)
_CODES = ("error_code", "partition_error_code")
"""Names of an error code field (AddPartitionsToTxn's partitions call theirs
PartitionErrorCode)."""
_ERROR_FIELDS = (*_CODES, "error_message")
# What identifies an entity (copied from the request's element into the answer's); other
# same-named fields (NumPartitions, CommittedOffset) are answers, left at their defaults.
_KEYS = frozenset().union(*_ALIASES) | {
    "topic_id",
    "resource_type",
    "resource_name",
    "member_id",
    "group_instance_id",
}


def error_response(
    request: Struct, response_cls: type[Message], version: int, code: int, message: str
) -> Message:
    """``response_cls`` at ``version`` answering ``request`` with error ``code`` (and
    ``message`` where the response has room for one) everywhere the request named something."""
    response = response_cls()
    if _has(response_cls, "error_code", version):
        response.error_code = code  # type: ignore[attr-defined]
        if _has(response_cls, "error_message", version):
            response.error_message = message  # type: ignore[attr-defined]
        return response
    _mirror(request, response, version, code, message, copy_keys=False)
    return response


def _has(cls: type[Struct], name: str, version: int) -> bool:
    return any(f.name == name and in_range(version, f.versions) for f in cls._fields)


def _fields(cls: type[Struct], version: int) -> list[FieldSpec]:
    return [f for f in cls._fields if in_range(version, f.versions)]


def _holds_error(cls: type[Struct], version: int) -> bool:
    """Whether elements of ``cls`` carry an error code, themselves or in a nested array."""
    return any(
        f.name in _CODES or (f.struct is not None and _holds_error(f.struct, version))
        for f in _fields(cls, version)
    )


def _same_key(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _ALIASES)


def _mirror(
    request: Struct, response: Struct, version: int, code: int, message: str, *, copy_keys: bool
) -> None:
    req_fields = [f for f in _fields(type(request), version) if f.is_array]
    used: set[str] = set()
    for f in _fields(type(response), version):
        if f.name in _CODES:
            setattr(response, f.name, code)
        elif f.name == "error_message" and f.kafka_type == "string":
            setattr(response, f.name, message)
        elif f.is_array and f.struct is not None:
            if not _holds_error(f.struct, version):
                continue
            source = _matching_array(f, req_fields, used, version)
            if source is None:
                continue
            used.add(source.name)
            setattr(
                response,
                f.name,
                [
                    _element(item, source, f.struct, version, code, message)
                    for item in getattr(request, source.name) or []
                ],
            )
        elif copy_keys and f.name in _KEYS and f.struct is None and not f.is_array:
            for g in _fields(type(request), version):
                if g.kafka_type == f.kafka_type and _same_key(g.name, f.name):
                    value = getattr(request, g.name)
                    if value is not None or in_range(version, f.nullable):
                        setattr(response, f.name, value)  # else its default ("", as Kafka)
                    break


def _matching_array(
    target: FieldSpec, candidates: list[FieldSpec], used: set[str], version: int
) -> FieldSpec | None:
    """The request array the response array ``target`` answers: the same name, else the
    unused one whose element keys overlap most with ``target``'s (ties: the first)."""
    free = [c for c in candidates if c.name not in used]
    for c in free:
        if c.name == target.name:
            return c
    assert target.struct is not None
    wanted = [f.name for f in _fields(target.struct, version) if f.name not in _ERROR_FIELDS]

    def overlap(c: FieldSpec) -> int:
        if c.struct is None:  # plain keys: they fill one field of the answer
            return 1 if any(_scalar_slot(target.struct, c.element, version)) else -1  # type: ignore[arg-type]
        names = [g.name for g in _fields(c.struct, version)]
        return sum(any(_same_key(n, w) for n in names) for w in wanted)

    scored = [(overlap(c), -i, c) for i, c in enumerate(free)]
    scored = [s for s in scored if s[0] >= 0]
    return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None


def _scalar_slot(cls: type[Struct], kafka_type: str, version: int) -> list[str]:
    return [
        f.name
        for f in _fields(cls, version)
        if f.kafka_type == kafka_type and f.name not in _ERROR_FIELDS
    ]


def _element(
    item: Any, source: FieldSpec, cls: type[Struct], version: int, code: int, message: str
) -> Struct:
    out = cls()
    if source.struct is None:
        _mirror(Struct(), out, version, code, message, copy_keys=False)
        slots = _scalar_slot(cls, source.element, version)
        if slots:
            setattr(out, slots[0], item)
        return out
    _mirror(item, out, version, code, message, copy_keys=True)
    return out


def error_elements(
    request: Struct,
    request_field: str,
    items: list[Any],
    response_cls: type[Message],
    response_field: str,
    version: int,
    code: int,
    message: str | None,
) -> list[Struct]:
    """The elements of ``response_cls``'s array ``response_field`` answering ``items`` (some
    elements of ``request``'s array ``request_field``) with error ``code``: the keys copied,
    every error code set, as :func:`error_response` fills a whole answer. The authorizer
    answers the items it refuses this way and lets the handler answer the rest."""
    source = next(f for f in _fields(type(request), version) if f.name == request_field)
    target = next(f for f in _fields(response_cls, version) if f.name == response_field)
    assert target.struct is not None
    return [_element(item, source, target.struct, version, code, message) for item in items]  # type: ignore[arg-type]
