"""The errors the generation chain raises for input it cannot serve as given.

`InvalidInput` carries a stable `code` (the web layer puts it in its error envelope and maps the
family to 400 in one place); the message names the problem and how to fix it. It subclasses
ValueError so plain Python callers can catch it the usual way. Any other exception from the
chain is a bug and must surface as one (a 500 with a log line on a server), never as a
client error.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    def __init__(self, message: str, code: str = "invalid_input"):
        super().__init__(message)
        self.code = code
        self.message = message
