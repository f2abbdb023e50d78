# ApiVersions (key 18), versions 0-4.
# - Advertises exactly the served table (protocol_specs/broker-apis.yaml).
# - A version we do not know is answered as v0 with UNSUPPORTED_VERSION by the server itself,
#   before the body is parsed (KIP-511; see codegen/special_cases.py).
# - The response header is always v0 (KIP-511), which the registry's header table encodes.
from __future__ import annotations

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersionsResponse
from kafscale.broker.handlers import RequestContext


async def handle(ctx: RequestContext, request: ApiVersionsRequest) -> ApiVersionsResponse:
    from kafscale.broker.server import advertised_apis

    return ApiVersionsResponse(error_code=0, api_keys=advertised_apis(), throttle_time_ms=0)
