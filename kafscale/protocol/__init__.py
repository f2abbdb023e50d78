"""The protocol layer: sans-io codecs, framing and headers (no sockets, no asyncio).

Submodules: :mod:`errors` (``ProtocolError``), :mod:`wire` (primitives), :mod:`message` (base
classes of the generated codecs), :mod:`reference` (interpreted codec), :mod:`framing`.
"""

from kafscale.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
