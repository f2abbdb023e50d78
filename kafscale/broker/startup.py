"""Why a broker could not start.

The broker reports what it cannot start with (a bad setting, a metadata store address it cannot
use, a data directory it cannot create) as :class:`BrokerStartError`; whoever started it decides
what that means to its user: the ``kafscale`` command prints one line and exits with status 2
(``kafscale/cli.py``). The broker itself knows nothing of the command line.
"""

from __future__ import annotations


class BrokerStartError(Exception):
    """The broker cannot start with what it was given; the message names the setting and why,
    in one line fit for a user."""
