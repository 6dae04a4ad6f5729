"""``python -m rwwce ...``: the same command line as the ``rwwce`` console script."""

import sys

from rwwce.cli import main

sys.exit(main())
