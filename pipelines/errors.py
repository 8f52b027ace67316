"""User-facing errors: one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad path, unknown label, bad number). Printed, exit 2."""


def cli_entry(main):
    """Wrap a script's ``main`` so a :class:`UserError` prints one line and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
