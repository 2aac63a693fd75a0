"""`python -m caplab` is the `caplab` command."""

import sys

from caplab.cli import main

sys.exit(main())
