"""Topic configs as Kafka 3.9 validates, resolves and describes them, from the generated tables
(``protocol_specs/topic-configs.yaml`` -> :mod:`generated.topic_configs`,
``broker-configs.yaml`` -> :mod:`generated.broker_configs`).

- **Validation** (:func:`validate`) is Kafka's ``LogConfig.validate`` as a KRaft controller runs
  it: unknown names (``Unknown topic config name: X``), then every value parsed as its type and
  checked by its validator in LogConfig's order (``ConfigDef.parseType`` / ``ensureValid``:
  ``Invalid value X for configuration Y: <why>``), then the checks across configs
  (min.compaction.lag.ms <= max.compaction.lag.ms; remote.storage.enable=true is refused, as by
  a broker without tiered storage). Every refusal is INVALID_CONFIG with Kafka's message.
- **Defaults**: a topic config without an override takes its broker synonym's value (the first
  synonym this broker sets: STATIC_BROKER_CONFIG; else KafScale's default of a broker setting,
  e.g. log.segment.bytes 64 MiB, or Kafka's: DEFAULT_CONFIG).
- **Describing** (:func:`describe_topic_config`, :func:`describe_broker_config`): value, source,
  synonyms (the override, then the broker synonyms set or defaulted, as Kafka's ConfigHelper
  lists them), type and documentation. Values are written as Kafka writes the parsed value
  (``ConfigDef.convertToString``: ``" 100"`` -> ``100``, ``compact, delete`` -> ``compact,delete``).
- **Effects at append** (:class:`AppendRules`, from :func:`append_rules`): max.message.bytes,
  message.timestamp.type, the timestamp bounds and compression.type (see
  ``kafscale/broker/append_rules.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from generated.broker_configs import BROKER_CONFIGS, BrokerConfigDef
from generated.errors import ErrorCode
from generated.topic_configs import TOPIC_CONFIGS, TopicConfigDef
from kafscale.broker.config import BrokerConfig
from kafscale.protocol.records import Compression

# ConfigSource (DescribeConfigs).
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5
# ConfigType (DescribeConfigs v3+).
CONFIG_TYPES = {
    "BOOLEAN": 1,
    "STRING": 2,
    "INT": 3,
    "SHORT": 4,
    "LONG": 5,
    "DOUBLE": 6,
    "LIST": 7,
    "CLASS": 8,
    "PASSWORD": 9,
}
LONG_MAX = 2**63 - 1
_INT_BITS = {"SHORT": 15, "INT": 31, "LONG": 63}
_INTEGER = re.compile(r"[+-]?[0-9]+")
# What Java's Double.parseDouble takes (decimal, NaN, Infinity, hex; an f/F/d/D suffix).
_DECIMAL = re.compile(
    r"[+-]?(NaN|Infinity|((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)[fFdD]?)",
)
_HEX = re.compile(r"[+-]?0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+[fFdD]?")
_THROTTLED = re.compile(r"([0-9]+:[0-9]+)?")

_BROKER_DEFAULTS = BrokerConfig()


class ConfigError(Exception):
    """A config Kafka would refuse: INVALID_CONFIG with Kafka's message."""

    code = ErrorCode.INVALID_CONFIG

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _invalid(name: str, value: object, why: str) -> ConfigError:
    """Kafka's ConfigException(name, value, message) text."""
    return ConfigError(f"Invalid value {value} for configuration {name}: {why}")


# --- Java's text of values ---------------------------------------------------------------


def java_trim(text: str) -> str:
    """``String.trim()``: strips every character up to U+0020 (not Unicode spaces)."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def java_double(x: float) -> str:
    """``Double.toString``: ``0.5``, ``2.0``, ``1.0E7``, ``1.0E-4``, ``NaN``, ``Infinity``."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    sign = "-" if str(x).startswith("-") else ""
    x = abs(x)
    if x == 0 or 1e-3 <= x < 1e7:
        return sign + repr(x)  # plain in this range, with at least one decimal
    digits_tuple, exponent = Decimal(repr(x)).normalize().as_tuple()[1:]
    digits = "".join(map(str, digits_tuple))
    power = len(digits) - 1 + int(exponent)
    mantissa = digits[0] + "." + (digits[1:] or "0")
    return f"{sign}{mantissa}E{power}"


def java_split(text: str, sep: str) -> list[str]:
    """``String.split(sep)`` of a literal separator: trailing empty strings dropped."""
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts or ([""] if text == "" else [])


def _java_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


# --- parse and validate one value ----------------------------------------------------------


def parse(name: str, raw: str, definition: TopicConfigDef | None = None) -> Any:
    """The value as Kafka parses (``ConfigDef.parseType``) and validates it (the config's
    validator): bool, int, float, str or list of str; :class:`ConfigError` otherwise."""
    d = definition or TOPIC_CONFIGS[name]
    value = _parse_type(name, raw, d.type)
    _ensure_valid(name, value, d)
    return value


def _parse_type(name: str, raw: str, kind: str) -> Any:
    trimmed = java_trim(raw)
    if kind == "BOOLEAN":
        if trimmed.lower() == "true":
            return True
        if trimmed.lower() == "false":
            return False
        raise _invalid(name, raw, "Expected value to be either true or false")
    if kind == "STRING":
        return trimmed
    if kind in _INT_BITS:
        bits = _INT_BITS[kind]
        if not _INTEGER.fullmatch(trimmed) or not -(2**bits) <= int(trimmed) < 2**bits:
            raise _invalid(name, raw, f"Not a number of type {kind}")
        return int(trimmed)
    if kind == "DOUBLE":
        if _DECIMAL.fullmatch(trimmed):
            number = trimmed.rstrip("fFdD") if "Infinity" not in trimmed else trimmed
            return float(number.replace("Infinity", "inf").replace("NaN", "nan"))
        if _HEX.fullmatch(trimmed):
            return float.fromhex(trimmed.rstrip("fFdD"))
        raise _invalid(name, raw, "Not a number of type DOUBLE")
    if kind == "LIST":
        return [] if trimmed == "" else re.split(r"\s*,\s*", trimmed)
    raise AssertionError(f"{name}: type {kind} is not a topic config type")


def _number_text(value: int | float) -> str:
    return java_double(value) if isinstance(value, float) else str(value)


def _ensure_valid(name: str, value: Any, d: TopicConfigDef) -> None:
    v = d.validator
    if v is None:
        return
    if v.kind in ("at_least", "between"):
        # Range: compared as doubles, so NaN passes (as in Kafka).
        if v.low is not None and value < v.low:
            raise _invalid(name, _number_text(value), f"Value must be at least {v.low}")
        if v.high is not None and value > v.high:
            raise _invalid(name, _number_text(value), f"Value must be no more than {v.high}")
    elif v.kind == "between_or":
        assert v.low is not None and v.high is not None
        if value > v.high or (value < v.low and value != v.alternative):
            raise _invalid(
                name,
                value,
                f"Value must be between {v.low} and {v.high} or equal to {v.alternative}",
            )
    elif v.kind == "in":
        for item in value if d.type == "LIST" else [value]:
            if item not in v.values:
                raise _invalid(name, item, "String must be one of: " + ", ".join(v.values))
    elif v.kind == "metadata_version":
        text = str(value)
        parts = text.split(".")
        keep = 3 if text.startswith("0.") else 2
        key = text if keep >= len(parts) else ".".join(parts[:keep])
        if key not in v.values:
            raise _invalid(name, text, f"Version {text} is not a valid version")
    elif v.kind == "throttled_replicas":
        items = [java_trim(i) for i in value]
        if not (all(_THROTTLED.fullmatch(i) for i in items) or "".join(items) == "*"):
            raise _invalid(
                name,
                _java_list(value),
                f"{name} must be the literal '*' or a list of replicas in the following format: "
                "[partitionId]:[brokerId],[partitionId]:[brokerId],...",
            )
    else:
        raise AssertionError(f"{name}: unknown validator {v.kind}")


def to_text(value: Any, kind: str) -> str:
    """``ConfigDef.convertToString`` of a parsed value."""
    if kind == "BOOLEAN":
        return "true" if value else "false"
    if kind == "DOUBLE":
        return java_double(value)
    if kind == "LIST":
        return ",".join(value)
    return str(value)


def canonical(name: str, raw: str) -> str:
    """A (valid) stored value as Kafka describes it: its parsed value written back."""
    d = TOPIC_CONFIGS[name]
    try:
        return to_text(parse(name, raw, d), d.type)
    except ConfigError:  # stored before it was checked as strictly: as stored
        return raw


# --- validate a topic's configs --------------------------------------------------------------


def validate(configs: Mapping[str, str], broker: BrokerConfig) -> None:
    """Kafka's LogConfig.validate of a topic's whole override set (with this broker's
    defaults for the rest); raises :class:`ConfigError` for the first problem, as Kafka
    finds it."""
    for name in configs:
        if name not in TOPIC_CONFIGS:
            raise ConfigError(f"Unknown topic config name: {name}")
    parsed: dict[str, Any] = {}
    for name, d in TOPIC_CONFIGS.items():
        if name in configs:
            parsed[name] = parse(name, configs[name], d)

    def value(name: str) -> Any:
        if name in parsed:
            return parsed[name]
        return parse(name, topic_default(broker, name)[0])

    lag_min, lag_max = value("min.compaction.lag.ms"), value("max.compaction.lag.ms")
    if lag_min > lag_max:
        raise ConfigError(
            f"conflict topic config setting min.compaction.lag.ms ({lag_min}) > "
            f"max.compaction.lag.ms ({lag_max})"
        )
    if value("remote.storage.enable"):
        raise ConfigError(
            "Tiered Storage functionality is disabled in the broker. Topic cannot be "
            "configured with remote log storage."
        )


# --- broker values and topic defaults ----------------------------------------------------


def _field_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _computed(config: BrokerConfig, what: str) -> str:
    if what == "listeners":
        return f"PLAINTEXT://{config.listen_host}:{config.listen_port}"
    if what == "advertised.listeners":
        host, port = config.advertised
        return f"PLAINTEXT://{host}:{port}"
    if what == "log.dirs":  # where the log is: the bucket, or the local object directory
        return config.log_dir
    raise AssertionError(f"no computed broker value {what}")


def broker_value(config: BrokerConfig, name: str) -> tuple[str | None, int]:
    """A broker config's value on this broker (None: Kafka's null) and its source."""
    b = BROKER_CONFIGS[name]
    if b.field is not None:
        value, default = getattr(config, b.field), getattr(_BROKER_DEFAULTS, b.field)
        return _field_text(value), STATIC_BROKER_CONFIG if value != default else DEFAULT_CONFIG
    if b.computed is not None:
        return _computed(config, b.computed), STATIC_BROKER_CONFIG
    if b.value is not None:
        return b.value, DEFAULT_CONFIG
    return b.default, DEFAULT_CONFIG


def topic_default(config: BrokerConfig, name: str) -> tuple[str, int]:
    """The value a topic config has without an override on this broker, and its source: the
    first broker synonym this broker sets (STATIC_BROKER_CONFIG), else the broker's own value
    of its synonyms, else Kafka's default (DEFAULT_CONFIG)."""
    d = TOPIC_CONFIGS[name]
    synonyms = [BROKER_CONFIGS[s] for s in d.synonyms]
    for b in synonyms:
        if b.field is not None and broker_value(config, b.name)[1] == STATIC_BROKER_CONFIG:
            return _field_text(getattr(config, b.field)), STATIC_BROKER_CONFIG
    for b in synonyms:
        if b.field is not None or b.value is not None:
            value = _broker_default(b)
            assert value is not None
            return value, DEFAULT_CONFIG
    return d.default, DEFAULT_CONFIG


def topic_value(configs: Mapping[str, str], name: str, config: BrokerConfig) -> Any:
    """A topic config's parsed value: the override, else this broker's default."""
    raw = configs.get(name)
    if raw is not None:
        try:
            return parse(name, raw)
        except ConfigError:
            pass  # stored before it was checked as strictly: the default
    return parse(name, topic_default(config, name)[0])


# --- describing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """One DescribeConfigs (or CreateTopics) entry."""

    name: str
    value: str | None
    source: int
    synonyms: list[tuple[str, str | None, int]]
    type: int
    doc: str


def _broker_default(b: BrokerConfigDef) -> str | None:
    """A broker config's value when not set: KafScale's default of its setting, what the
    broker does, or Kafka's default (None: Kafka has none)."""
    if b.field is not None:
        return _field_text(getattr(_BROKER_DEFAULTS, b.field))
    if b.value is not None:
        return b.value
    return b.default


def _broker_chain(
    config: BrokerConfig, names: tuple[str, ...], first: str
) -> list[tuple[str, str | None, int]]:
    """Kafka's ConfigHelper.configSynonyms: the names this broker sets (static), then the
    names' defaults, from the first entry for ``first`` on."""
    chain: list[tuple[str, str | None, int]] = []
    for n in names:
        value, source = broker_value(config, n)
        if source == STATIC_BROKER_CONFIG:
            chain.append((n, value, STATIC_BROKER_CONFIG))
    for n in names:
        default = _broker_default(BROKER_CONFIGS[n])
        if default is not None:
            chain.append((n, default, DEFAULT_CONFIG))
    while chain and chain[0][0] != first:
        chain.pop(0)
    return chain


def describe_topic_config(
    config: BrokerConfig, name: str, overrides: Mapping[str, str]
) -> Described:
    """A topic config as DescribeConfigs shows it."""
    d = TOPIC_CONFIGS[name]
    chain: list[tuple[str, str | None, int]] = []
    if name in overrides:
        value, source = canonical(name, overrides[name]), DYNAMIC_TOPIC_CONFIG
        chain.append((name, value, DYNAMIC_TOPIC_CONFIG))
    else:
        value, source = topic_default(config, name)
    if d.synonyms:
        chain += _broker_chain(config, d.synonyms, d.synonyms[0])
    return Described(name, value, source, chain, CONFIG_TYPES[d.type], d.doc)


def _group_of(name: str) -> tuple[str, ...]:
    """Kafka's DynamicBrokerConfig.brokerConfigSynonyms: the synonyms setting the same topic
    config (log.retention.ms, .minutes, .hours), or the name alone."""
    for d in TOPIC_CONFIGS.values():
        if name in d.synonyms and len(d.synonyms) > 1:
            return d.synonyms
    return (name,)


def describe_broker_config(config: BrokerConfig, name: str) -> Described:
    """A broker config as DescribeConfigs of this broker shows it."""
    b: BrokerConfigDef = BROKER_CONFIGS[name]
    value, _ = broker_value(config, name)
    chain = _broker_chain(config, _group_of(name), name)
    source = chain[0][2] if chain else DEFAULT_CONFIG
    return Described(name, value, source, chain, CONFIG_TYPES[b.type], b.doc)


# --- what the broker does at append ------------------------------------------------------

_CODECS = {
    "uncompressed": Compression.NONE,
    "gzip": Compression.GZIP,
    "snappy": Compression.SNAPPY,
    "lz4": Compression.LZ4,
    "zstd": Compression.ZSTD,
}


@dataclass(frozen=True)
class AppendRules:
    """What a topic's configs ask of a produced batch (``append_rules.py`` applies them)."""

    max_batch_bytes: int
    log_append_time: bool = False
    """message.timestamp.type=LogAppendTime."""
    before_max_ms: int = LONG_MAX
    """How far in the past a record's CreateTime may be (LONG_MAX: no bound)."""
    after_max_ms: int = LONG_MAX
    compression: int | None = None
    """The codec batches are stored in (None: the producer's)."""
    level: int | None = None

    @property
    def rewrites(self) -> bool:
        """Whether batches may be changed or refused beyond the size check."""
        return (
            self.log_append_time
            or self.compression is not None
            or self.before_max_ms != LONG_MAX
            or self.after_max_ms != LONG_MAX
        )


def append_rules(configs: Mapping[str, str], config: BrokerConfig) -> AppendRules:
    """The rules a topic's configs (overrides, else this broker's defaults) set."""

    def get(name: str) -> Any:
        return topic_value(configs, name, config)

    difference = get("message.timestamp.difference.max.ms")
    before, after = get("message.timestamp.before.max.ms"), get("message.timestamp.after.max.ms")
    codec = _CODECS.get(get("compression.type"))
    level = None
    if codec == Compression.GZIP:
        level = get("compression.gzip.level")
    elif codec == Compression.LZ4:
        level = get("compression.lz4.level")
    elif codec == Compression.ZSTD:
        level = get("compression.zstd.level")
    return AppendRules(
        max_batch_bytes=get("max.message.bytes"),
        log_append_time=get("message.timestamp.type") == "LogAppendTime",
        # As Kafka: the deprecated difference applies where before/after keep their default.
        before_max_ms=before if before != LONG_MAX else difference,
        after_max_ms=after if after != LONG_MAX else difference,
        compression=codec,
        level=level,
    )


def check_tables() -> list[str]:
    """Problems between the generated tables and BrokerConfig (a test asserts none): every
    field exists, and a topic config's field-backed synonym is its first (its value is in the
    topic config's unit: no hours-to-ms conversion)."""
    problems = []
    fields = {f.name for f in dataclasses.fields(BrokerConfig)}
    for b in BROKER_CONFIGS.values():
        if b.field is not None and b.field not in fields:
            problems.append(f"{b.name}: BrokerConfig has no field {b.field}")
    for d in TOPIC_CONFIGS.values():
        for i, s in enumerate(d.synonyms):
            if i and BROKER_CONFIGS[s].field is not None:
                problems.append(f"{d.name}: synonym {s} has a field but is not the first")
    return problems
