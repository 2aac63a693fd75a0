"""What caplab says while it works, through `logging` (logger "caplab"): silent in a library or notebook until
asked, one plain line per message on stderr for the command line and its worker processes.

    import logging; logging.getLogger("caplab").setLevel("INFO")   # a notebook that wants the progress lines
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "caplab-console"


def configure_console(level: int = logging.INFO) -> None:
    """Send caplab's log records to stderr as bare lines (idempotent; the CLI and worker processes call it)."""
    logger = logging.getLogger("caplab")
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # an application's root handler would print each line twice
    logger.setLevel(level)
