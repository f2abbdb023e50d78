"""The protocol layer: sans-io codecs, framing and headers (no sockets, no asyncio).

Submodules: :mod:`errors` (``ProtocolError``), :mod:`wire` (primitives), :mod:`message` (base
classes of the generated codecs), :mod:`reference` (interpreted codec), :mod:`framing`,
:mod:`accelerated` (the optional mypyc-compiled build of the hot codecs).
"""

from kafscale.protocol import accelerated
from kafscale.protocol.errors import ProtocolError

accelerated.install()  # the compiled codecs when KAFSCALE_ACCELERATE asks (accelerated.py)

__all__ = ["ProtocolError"]
