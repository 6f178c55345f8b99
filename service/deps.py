"""Annotated dependency aliases, so route functions stay short.

The getters are ``async``: FastAPI runs plain ``def`` dependencies in its threadpool, which costs a
thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from strop.index.settings import Settings
from strop.index.store import DocumentStore
from strop.service.manager import CollectionManager
from strop.service.searchlog import SearchLog
from strop.service.security import require
from strop.service.state import CollectionState


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> CollectionManager:
    return request.app.state.manager


async def get_store(request: Request) -> DocumentStore:
    return request.app.state.store


async def get_searchlog(request: Request) -> SearchLog:
    return request.app.state.searchlog


async def get_collection(name: str, request: Request) -> CollectionState:
    """The collection named in the path (404 if unknown)."""
    return request.app.state.manager.state(name)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[CollectionManager, Depends(get_manager)]
StoreDep = Annotated[DocumentStore, Depends(get_store)]
CollectionDep = Annotated[CollectionState, Depends(get_collection)]
SearchLogDep = Annotated[SearchLog, Depends(get_searchlog)]

Read = Depends(require("read"))
Write = Depends(require("write"))
Admin = Depends(require("admin"))
