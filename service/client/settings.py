"""Where the client finds its server: ``STROP_URL`` and ``STROP_API_KEY``."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """Read by :meth:`strop.client.Client.from_env` and the ``strop`` client commands; the server does not."""

    model_config = SettingsConfigDict(env_prefix="STROP_", extra="ignore")

    url: str = DEFAULT_URL
    api_key: str | None = None
