# SaslHandshake (key 17), versions 0-1.
# - On a SASL listener before authentication: the mechanism enabled (sasl.enabled.mechanisms,
#   exact name) -> 0 and the enabled list; otherwise UNSUPPORTED_SASL_MECHANISM (33) and the
#   list, then the connection closes (after the failure delay). v0 then exchanges raw tokens,
#   v1 SaslAuthenticate requests (kafscale/broker/server.py, Broker._authenticate).
# - After authentication: a re-authentication (KIP-368) when connections.max.reauth.ms > 0,
#   v1, and none started within the last second; otherwise ILLEGAL_SASL_STATE (34) with no
#   mechanisms, the connection kept. PLAINTEXT and SSL listeners answer 34 the same way.
from __future__ import annotations

from generated.errors import ErrorCode
from generated.sasl_handshake_request import SaslHandshakeRequest
from generated.sasl_handshake_response import SaslHandshakeResponse
from kafscale.broker.handlers import RequestContext


async def handle(ctx: RequestContext, request: SaslHandshakeRequest) -> SaslHandshakeResponse:
    session = ctx.session
    if session is None or not session.listener.sasl:
        return SaslHandshakeResponse(error_code=ErrorCode.ILLEGAL_SASL_STATE, mechanisms=[])
    code, mechanisms = ctx.broker.authenticator.handshake(session, request.mechanism, ctx.version)
    return SaslHandshakeResponse(error_code=code, mechanisms=mechanisms)
