"""strop's Python client: :class:`Client` (blocking) and :class:`AsyncClient`, on httpx.

>>> from strop.client import Client
>>> with Client("http://127.0.0.1:8000") as c:          # or Client.from_env(): STROP_URL, STROP_API_KEY
...     c.create_collection("docs")
...     c.upsert("docs", [{"id": "a", "text": "FAISS searches dense vectors"}])
...     c.search("docs", "vector search", top_k=3)["hits"]

Every API error raises :class:`StropError` (``.status``, ``.code``, ``.message``); no server
answering raises its subclass :class:`StropConnectionError`. Answers are plain dicts, typed in
:mod:`strop.client.types`.
"""

from strop.client._transport import AsyncClient, Client
from strop.client.errors import StropConnectionError, StropError
from strop.client.settings import DEFAULT_URL, ClientSettings

__all__ = ["AsyncClient", "Client", "ClientSettings", "DEFAULT_URL", "StropConnectionError", "StropError"]
