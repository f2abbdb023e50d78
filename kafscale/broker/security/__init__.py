"""Security: listeners and TLS (:mod:`.listeners`, :mod:`.tls`), SASL authentication
(:mod:`.sasl`, :mod:`.scram`, credentials in the metadata store: :mod:`.credentials`), and
authorization with Kafka's ACLs (:mod:`.acl`, :mod:`.authorizer`, what each API asks:
:mod:`.rules`). docs/security.md says how to turn each on.

Handlers see one narrow surface: ``ctx.principal``, ``ctx.authorize(operation,
resource_type, name)`` and ``ctx.session`` (the connection's security state); the per-API
checks live in :mod:`.rules`, applied around the handlers by the server.
"""
