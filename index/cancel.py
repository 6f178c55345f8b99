"""Cooperative cancellation, shared by every long-running loop (view rendering, training, encoding)."""


class Cancelled(Exception):
    """A loop's ``should_stop()`` said yes: the job was cancelled (or failed elsewhere) while it ran."""
