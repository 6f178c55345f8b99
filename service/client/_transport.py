"""The two thin transports: :class:`Client` (blocking) and :class:`AsyncClient` run the same flows.

Each public method is a flow of :mod:`strop.client._flows` bound by :func:`_sync` or :func:`_async`,
so both classes have the flows' signatures, defaults and docstrings without restating them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from strop.client import _flows as flows
from strop.client._flows import Blocking, Call, Flow, Sleep
from strop.client.errors import StropConnectionError
from strop.client.settings import DEFAULT_URL, ClientSettings
from strop.client.types import DocumentRef

P = ParamSpec("P")
T = TypeVar("T")


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StropConnectionError("bad_url", f"{url!r} is not a server URL: give one like {DEFAULT_URL}", url)
    return url.rstrip("/")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _transport_error(e: httpx.TransportError, url: str, call: Call, timeout: httpx.Timeout) -> StropConnectionError:
    """httpx's transport failures as one StropConnectionError that names the URL and what to do."""
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
        reason = str(e).split("] ")[-1].lower() or type(e).__name__  # "[Errno 111] Connection refused"
        return StropConnectionError("unreachable", f"no strop server answers at {url} ({reason}): start one with: "
                                    "strop serve, or point to a running one with --url or STROP_URL", url)
    if isinstance(e, httpx.TimeoutException):
        return StropConnectionError("timeout", f"{call.method} {url}{call.path} had no answer within {timeout.read} s: "
                                    "the server is busy; retry, or give the client a longer timeout", url)
    return StropConnectionError("connection_lost", f"the connection to {url} broke during {call.method} {call.path} "
                                f"({type(e).__name__}: {e}): retry once the server answers again", url)


def _as_method(method: Any, flow: Callable[..., Any], owner: str) -> None:
    """Show ``help()`` and IDEs the flow's signature as a method that returns the flow's result."""
    functools.update_wrapper(method, flow)
    del method.__wrapped__
    sig = inspect.signature(flow)
    result = str(sig.return_annotation).removeprefix("Flow[").removesuffix("]")
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()], return_annotation=result)
    method.__annotations__ = {**flow.__annotations__, "return": result}
    method.__module__ = "strop.client"
    method.__qualname__ = f"{owner}.{flow.__name__}"


def _sync(flow: Callable[P, Flow[T]]) -> Callable[Concatenate[Any, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(flow(*args, **kwargs))

    _as_method(method, flow, "Client")
    return method


def _async(flow: Callable[P, Flow[T]]) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(flow(*args, **kwargs))

    _as_method(method, flow, "AsyncClient")
    return method


class _Base:
    """Attributes common to both clients."""

    url: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Client(_Base):
    """strop's REST API from Python, blocking. Every API error raises :class:`StropError`; a server that
    does not answer raises :class:`StropConnectionError`.

    ``api_key``: the bearer token, when the server has keys. ``transport``: an httpx transport (tests,
    proxies). ``http``: send through this ``httpx.Client`` instead (its base URL and headers as they
    are; e.g. a FastAPI TestClient). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, *, http: httpx.Client | None = None):
        self._owned = http is None
        if http is None:
            http = httpx.Client(base_url=_check_url(url), headers=_headers(api_key), timeout=timeout,
                                transport=transport)
        self._http = http
        self.url = str(http.base_url).rstrip("/")

    @classmethod
    def from_env(cls, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> Self:
        """A client for ``STROP_URL`` (default http://127.0.0.1:8000) with ``STROP_API_KEY``."""
        s = ClientSettings()
        return cls(s.url, s.api_key or None, timeout, transport)

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, call: Call) -> Any:
        try:
            r = self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            raise _transport_error(e, self.url, call, self._http.timeout) from e
        return flows.decode(r.status_code, r.content, r.json)

    def _run(self, flow: Flow[T]) -> T:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                if isinstance(step, Call):
                    result = self._call(step)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Blocking):
                    result = step.fn()
            except Exception as e:  # noqa: BLE001 - handed to the flow, which re-raises what it does not handle
                error = e

    create_collection = _sync(flows.create_collection)
    list_collections = _sync(flows.list_collections)
    get_collection = _sync(flows.get_collection)
    delete_collection = _sync(flows.delete_collection)
    set_teacher = _sync(flows.set_teacher)
    upsert = _sync(flows.upsert)
    get_document = _sync(flows.get_document)
    delete_document = _sync(flows.delete_document)
    list_documents = _sync(flows.list_documents)
    search = _sync(flows.search)
    evaluate = _sync(flows.evaluate)
    feedback = _sync(flows.feedback)
    set_autopilot = _sync(flows.set_autopilot)
    get_autopilot = _sync(flows.get_autopilot)
    disable_autopilot = _sync(flows.disable_autopilot)
    embeddings = _sync(flows.embeddings)
    embeddings_response = _sync(flows.embeddings_response)
    submit_job = _sync(flows.submit_job)
    get_job = _sync(flows.get_job)
    list_jobs = _sync(flows.list_jobs)
    cancel_job = _sync(flows.cancel_job)
    follow_job = _sync(flows.follow_job)
    list_versions = _sync(flows.list_versions)
    activate_version = _sync(flows.activate_version)
    ingest_code = _sync(flows.ingest_code)
    health = _sync(flows.health)
    ready = _sync(flows.ready)

    def iter_documents(self, collection: str, page_size: int = 1000) -> Iterator[DocumentRef]:
        """Every document's id and metadata, in id order, fetched a page at a time."""
        after = ""
        while True:
            page = self.list_documents(collection, after, page_size)
            yield from page["documents"]
            if not page["next"]:
                return
            after = page["next"]


class AsyncClient(_Base):
    """:class:`Client`'s methods, each awaitable, on ``httpx.AsyncClient``; local work (parsing a
    source tree for :meth:`ingest_code`) runs in a thread. Use it with ``async with``, or await
    :meth:`aclose`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None, *, http: httpx.AsyncClient | None = None):
        self._owned = http is None
        if http is None:
            http = httpx.AsyncClient(base_url=_check_url(url), headers=_headers(api_key), timeout=timeout,
                                     transport=transport)
        self._http = http
        self.url = str(http.base_url).rstrip("/")

    @classmethod
    def from_env(cls, *, timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> Self:
        """A client for ``STROP_URL`` (default http://127.0.0.1:8000) with ``STROP_API_KEY``."""
        s = ClientSettings()
        return cls(s.url, s.api_key or None, timeout, transport)

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, call: Call) -> Any:
        try:
            r = await self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            raise _transport_error(e, self.url, call, self._http.timeout) from e
        return flows.decode(r.status_code, r.content, r.json)

    async def _run(self, flow: Flow[T]) -> T:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                if isinstance(step, Call):
                    result = await self._call(step)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Blocking):
                    result = await asyncio.to_thread(step.fn)
            except Exception as e:  # noqa: BLE001 - handed to the flow, which re-raises what it does not handle
                error = e

    create_collection = _async(flows.create_collection)
    list_collections = _async(flows.list_collections)
    get_collection = _async(flows.get_collection)
    delete_collection = _async(flows.delete_collection)
    set_teacher = _async(flows.set_teacher)
    upsert = _async(flows.upsert)
    get_document = _async(flows.get_document)
    delete_document = _async(flows.delete_document)
    list_documents = _async(flows.list_documents)
    search = _async(flows.search)
    evaluate = _async(flows.evaluate)
    feedback = _async(flows.feedback)
    set_autopilot = _async(flows.set_autopilot)
    get_autopilot = _async(flows.get_autopilot)
    disable_autopilot = _async(flows.disable_autopilot)
    embeddings = _async(flows.embeddings)
    embeddings_response = _async(flows.embeddings_response)
    submit_job = _async(flows.submit_job)
    get_job = _async(flows.get_job)
    list_jobs = _async(flows.list_jobs)
    cancel_job = _async(flows.cancel_job)
    follow_job = _async(flows.follow_job)
    list_versions = _async(flows.list_versions)
    activate_version = _async(flows.activate_version)
    ingest_code = _async(flows.ingest_code)
    health = _async(flows.health)
    ready = _async(flows.ready)

    async def iter_documents(self, collection: str, page_size: int = 1000) -> AsyncIterator[DocumentRef]:
        """Every document's id and metadata, in id order, fetched a page at a time."""
        after = ""
        while True:
            page = await self.list_documents(collection, after, page_size)
            for doc in page["documents"]:
                yield doc
            if not page["next"]:
                return
            after = page["next"]
