"""strop's Python client (sync and async, on httpx)."""
