"""``python -m rwwce ...``: the same command line as the ``rwwce`` console script."""

import sys

from rwwce.cli import main

if __name__ == "__main__":
    sys.exit(main())
