"""Names that become directory names under the runs root: recipe names, run, sweep and study ids.

A name is one safe path component, so nothing read from a recipe, an override
or the command line can make caplab write outside the runs root.
"""

from __future__ import annotations

import re

from caplab.errors import ConfigError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def check_name(name: str, what: str) -> str:
    """`name` if it is one safe path component (letters, digits, . _ + -, starting with a letter or digit, no "..")."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"bad {what} {name!r}: use letters, digits and . _ + - (starting with a letter or digit)")
    return name
