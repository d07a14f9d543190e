"""The one exception type that means "the user's input or settings are wrong".

Entry points catch it, print its message (which names the file, key or URL and what to do) and
exit with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input or configuration; the message tells the user what to change."""

    exit_code = 2
