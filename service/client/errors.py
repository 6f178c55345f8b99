"""The client's one exception type: every API error, and a server that does not answer."""

from __future__ import annotations


class StropError(Exception):
    """An error answer of the API, ``{"error": {"code", "message"}}``, with its HTTP status.

    ``str(e)`` is one line, ``error 404 not_found: collection 'x' does not exist``.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"error {self.status} {self.code}: {self.message}"


class StropConnectionError(StropError):
    """No answer from the server: nothing listens at the URL, the connection broke, or it timed out.

    ``status`` is 0; ``code`` is ``unreachable``, ``connection_lost`` or ``timeout``; the message names
    the URL and says what to do.
    """

    def __init__(self, code: str, message: str, url: str):
        super().__init__(0, code, message)
        self.url = url

    def __str__(self) -> str:
        return self.message
