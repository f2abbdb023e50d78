"""``python -m kafscale``: the ``kafscale`` command."""

import sys

from kafscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
