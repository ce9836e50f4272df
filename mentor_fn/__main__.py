"""``python -m mentor_fn``: see :mod:`mentor_fn._app.cli`."""

import sys

from ._app.cli import main

if __name__ == "__main__":
    sys.exit(main())
