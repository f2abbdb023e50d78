# SaslAuthenticate (key 36), versions 0-2.
# - One step of the exchange the SaslHandshake chose (PLAIN, SCRAM-SHA-256/512): 0 and the
#   server's next token; the final step also carries session_lifetime_ms (v1+):
#   connections.max.reauth.ms, or 0 when sessions do not expire.
# - A failure: SASL_AUTHENTICATION_FAILED (58) with the mechanism's text (unknown users and
#   wrong passwords share one text), then the connection closes after the failure delay.
# - Without a handshake before it, after authentication ("SaslAuthenticate request received
#   after successful authentication"), or on a PLAINTEXT/SSL listener: ILLEGAL_SASL_STATE (34).
from __future__ import annotations

from generated.errors import ErrorCode
from generated.sasl_authenticate_request import SaslAuthenticateRequest
from generated.sasl_authenticate_response import SaslAuthenticateResponse
from kafscale.broker.handlers import RequestContext


async def handle(ctx: RequestContext, request: SaslAuthenticateRequest) -> SaslAuthenticateResponse:
    session = ctx.session
    if session is None or not session.listener.sasl:
        return SaslAuthenticateResponse(
            error_code=ErrorCode.ILLEGAL_SASL_STATE,
            error_message="SaslAuthenticate request received on a listener without SASL",
            auth_bytes=b"",
        )
    code, message, token, lifetime = await ctx.broker.authenticator.authenticate(
        session, bytes(request.auth_bytes)
    )
    return SaslAuthenticateResponse(
        error_code=code, error_message=message, auth_bytes=token, session_lifetime_ms=lifetime
    )
