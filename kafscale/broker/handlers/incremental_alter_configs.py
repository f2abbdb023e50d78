# IncrementalAlterConfigs (key 44), versions 0-1.
# - TOPIC resources: each config names an operation on the topic's overrides, applied as Kafka
#   3.9's controller applies them: SET (0) stores the value, DELETE (1) removes the override
#   (back to the default; a name with no override, known or not, changes nothing), APPEND (2) /
#   SUBTRACT (3) add or remove comma-separated items of a LIST config (cleanup.policy), starting
#   from the override or else Kafka's default. The resulting override set is then validated as
#   a whole (kafscale/broker/topic_configs.py): an unknown name, a bad value, or APPEND/SUBTRACT
#   on a config that is not a LIST -> INVALID_CONFIG (40) with Kafka's message. SUBTRACT may
#   leave cleanup.policy empty, which Kafka 3.9 accepts (the topic then has no retention:
#   neither delete nor compact applies).
# - An unknown operation, a null value (other than for DELETE) or a config named twice ->
#   INVALID_REQUEST (42); unknown topic -> UNKNOWN_TOPIC_OR_PARTITION (3).
# - BROKER / BROKER_LOGGER resources -> INVALID_REQUEST (dynamic broker configs are not
#   supported), as in AlterConfigs. ValidateOnly checks without storing.
from __future__ import annotations

from generated.errors import ErrorCode
from generated.incremental_alter_configs_request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from generated.incremental_alter_configs_response import (
    AlterConfigsResourceResponse,
    IncrementalAlterConfigsResponse,
)
from generated.topic_configs import TOPIC_CONFIGS
from kafscale.broker.handlers import RequestContext
from kafscale.broker.handlers.alter_configs import alter_topic_configs
from kafscale.broker.topic_configs import java_split
from kafscale.broker.topics import TopicError

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
OPERATIONS = {SET: "SET", DELETE: "DELETE", APPEND: "APPEND", SUBTRACT: "SUBTRACT"}


async def handle(
    ctx: RequestContext, request: IncrementalAlterConfigsRequest
) -> IncrementalAlterConfigsResponse:
    broker = ctx.broker

    def updated(resource: AlterConfigsResource) -> dict[str, str]:
        topic = broker.topics.get(resource.resource_name)
        assert topic is not None  # check_resource checked it
        configs = dict(topic.configs)
        nulls = [
            op.name for op in resource.configs if op.config_operation != DELETE and op.value is None
        ]
        if nulls:  # before anything else, as Kafka's broker checks them
            raise TopicError(
                ErrorCode.INVALID_REQUEST, "Null value not supported for : " + ", ".join(nulls)
            )
        for op in resource.configs:
            _apply(configs, op)
        return configs

    results = await alter_topic_configs(
        ctx, request.resources, AlterConfigsResourceResponse, updated, request.validate_only
    )
    return IncrementalAlterConfigsResponse(throttle_time_ms=0, responses=results)


def _apply(configs: dict[str, str], op: AlterableConfig) -> None:
    """One operation, as Kafka's ConfigurationControlManager applies it (the result is
    validated as a whole afterwards)."""
    name, value = op.name, op.value
    if op.config_operation not in OPERATIONS:
        raise TopicError(
            ErrorCode.INVALID_REQUEST, f"unknown config operation {op.config_operation}"
        )
    if op.config_operation == DELETE:
        configs.pop(name, None)
        return
    assert value is not None
    if op.config_operation == SET:
        configs[name] = value
        return
    definition = TOPIC_CONFIGS.get(name)
    if definition is None or definition.type != "LIST":
        verb = OPERATIONS[op.config_operation]
        raise TopicError(
            ErrorCode.INVALID_CONFIG, f"Can't {verb} to key {name} because its type is not LIST."
        )
    current = configs.get(name, definition.default)
    items = [i for i in java_split(current, ",") if i]
    for item in java_split(value, ","):
        if op.config_operation == APPEND:
            if item not in items:
                items.append(item)
        elif item in items:
            items.remove(item)
    configs[name] = ",".join(items)
