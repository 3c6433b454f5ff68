"""The one base of every error a user can fix by changing an input (a file, a parameter, a store, a checkpoint).

The CLI prints such an error as one line naming what is wrong and exits with code 2; ``-v`` shows the traceback.
It lives at the bottom of the import graph so that every layer can raise it.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input: the message names the file/line, field or shard, and what to do."""
