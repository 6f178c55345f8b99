"""Versions in object storage: any S3-compatible server holds the durable copy, data dirs only a cache.

With ``STROP_ARTIFACTS_URL=s3://bucket/prefix`` a version lives under
``<prefix>/collections/<c>/versions/<vid>/``: its files under a folder named for the upload
(``<upload>/index.faiss``, ``<upload>/encoder/...``) and ``manifest.json``, which names that
upload. A writer uploads every file first and the manifest last, with a create-only put
(``If-None-Match: *``): the manifest is the commit marker, two writers that picked the same id
never mix their files (the loser's upload is deleted), so a version whose writer died mid-upload has no manifest and is
never listed, downloaded or served. A reader downloads into a temporary directory, checks every
file against the manifest's SHA-256 checksums, and only then renames it into its cache. The
active version of each collection is a row of the document store, shared by every host.

obstore (the Rust object_store crate's Python binding) is the client: one well-kept library for
S3, with create-only puts and the standard AWS variables for credentials.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from strop.index.settings import Settings
    from strop.index.store import DocumentStore
    from strop.index.versions import Remote

log = logging.getLogger("strop.artifacts")

MANIFEST = "manifest.json"


class ArtifactsUnavailable(Exception):
    """The object store does not answer, or refused what strop asked (credentials, bucket)."""


class S3Artifacts:
    def __init__(self, url: str, endpoint: str | None = None):
        from obstore.store import S3Store

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"artifacts URL {url!r}: use s3://BUCKET/PREFIX (or a local directory)")
        self.url = url
        self.prefix = parsed.path.strip("/")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
            config["allow_http"] = endpoint.startswith("http://")
            config["virtual_hosted_style_request"] = False
        config.setdefault("region", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the other standard variables), read by obstore
        self.s3 = S3Store(parsed.netloc, prefix=self.prefix or None, **config)

    def describe(self) -> str:
        return self.url

    @staticmethod
    def _key(collection: str, vid: str, name: str = "") -> str:
        return f"collections/{collection}/versions/{vid}/{name}"

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        import obstore

        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise
        except obstore.exceptions.AlreadyExistsError:
            raise
        except Exception as e:  # noqa: BLE001 - network errors, 403s and 5xx alike: the store is not usable now
            raise ArtifactsUnavailable(f"object store {self.url}: {what}: {type(e).__name__}: {e}"[:600]) from None

    # -- versions -----------------------------------------------------------------------------
    def upload(self, collection: str, vid: str, local: Path) -> None:
        """Every file of ``local`` (a complete version directory) under a fresh upload folder, then the
        manifest naming that folder, create-only."""
        import obstore

        upload = uuid.uuid4().hex[:12]
        files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST)
        for p in files:
            rel = p.relative_to(local).as_posix()
            self._call(f"upload {rel}", obstore.put, self.s3, self._key(collection, vid, f"{upload}/{rel}"), p)
        manifest = {**json.loads((local / MANIFEST).read_text()), "upload": upload}
        try:
            self._call("commit manifest", obstore.put, self.s3, self._key(collection, vid, MANIFEST),
                       json.dumps(manifest, indent=2, sort_keys=True).encode(), mode="create")
        except obstore.exceptions.AlreadyExistsError:
            self._delete_prefix(self._key(collection, vid, upload + "/"))
            raise FileExistsError(f"version {vid} of {collection} already exists in {self.url}") from None

    def _delete_prefix(self, prefix: str) -> None:
        import obstore

        keys = [m["path"] for batch in self._call("list", lambda: list(obstore.list(self.s3, prefix=prefix)))
                for m in batch]
        if keys:
            self._call("delete", obstore.delete, self.s3, keys)

    def manifest(self, collection: str, vid: str) -> dict[str, Any] | None:
        import obstore

        try:
            data = self._call("read manifest", obstore.get, self.s3, self._key(collection, vid, MANIFEST))
        except FileNotFoundError:
            return None
        return json.loads(bytes(data.bytes()))

    def download(self, collection: str, vid: str, dest: Path, manifest: dict[str, Any]) -> None:
        """The files the manifest lists, into ``dest`` (the caller checks checksums and renames)."""
        import obstore

        upload = manifest.get("upload", "")
        for rel in sorted(manifest.get("checksums", {})):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                result = self._call(f"download {rel}", obstore.get, self.s3,
                                    self._key(collection, vid, f"{upload}/{rel}" if upload else rel))
            except FileNotFoundError:
                raise ArtifactsUnavailable(f"version {vid} of {collection}: {rel} is missing from {self.url}") from None
            with open(target, "wb") as f:
                for chunk in result:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        with open(dest / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)

    def list(self, collection: str) -> list[dict[str, Any]]:
        """Manifests of the committed versions of ``collection``."""
        import obstore

        listing = self._call("list", lambda: obstore.list_with_delimiter(
            self.s3, prefix=f"collections/{collection}/versions/"))
        out = []
        for p in listing["common_prefixes"]:
            vid = p.rstrip("/").rsplit("/", 1)[-1]
            m = self.manifest(collection, vid)
            if m is not None:
                out.append(m)
        return out

    def delete(self, collection: str, vid: str) -> None:
        """Manifest first (the version is gone for every reader at once), then the files."""
        import obstore

        self._call("delete manifest", obstore.delete, self.s3, self._key(collection, vid, MANIFEST))
        self._delete_prefix(self._key(collection, vid))

    def delete_collection(self, collection: str) -> None:
        self._delete_prefix(f"collections/{collection}/")

    # -- any folder of files (a job's staged encoder) ------------------------------------------------
    def put_tree(self, prefix: str, local: Path) -> None:
        import obstore

        for p in sorted(local.rglob("*")):
            if p.is_file():
                self._call("upload", obstore.put, self.s3, f"{prefix}/{p.relative_to(local).as_posix()}", p)

    def get_tree(self, prefix: str, dest: Path) -> None:
        import obstore

        listing = self._call("list", lambda: [m for batch in obstore.list(self.s3, prefix=prefix + "/")
                                              for m in batch])
        if not listing:
            raise ArtifactsUnavailable(f"nothing under {prefix} in {self.url}")
        for m in listing:
            target = dest / m["path"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                for chunk in self._call("download", obstore.get, self.s3, m["path"]):
                    f.write(chunk)

    def delete_tree(self, prefix: str) -> None:
        self._delete_prefix(prefix + "/")

    def ping(self) -> None:
        import obstore

        t = time.perf_counter()
        self._call("list", lambda: obstore.list_with_delimiter(self.s3, prefix="collections/"))
        log.debug("object store answered in %.3f s", time.perf_counter() - t)


class DirArtifacts:
    """The same layout in a directory every host mounts (or one host's second disk): create-only commit with
    ``O_EXCL``, files written before the manifest, as in object storage."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def describe(self) -> str:
        return self.url

    def _dir(self, collection: str, vid: str) -> Path:
        return self.root / "collections" / collection / "versions" / vid

    def upload(self, collection: str, vid: str, local: Path) -> None:
        import shutil

        target = self._dir(collection, vid)
        if (target / MANIFEST).exists():
            raise FileExistsError(f"version {vid} of {collection} already exists in {self.url}")
        upload = uuid.uuid4().hex[:12]
        for p in sorted(local.rglob("*")):
            if p.is_file() and p != local / MANIFEST:
                dest = target / upload / p.relative_to(local)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest)
                with open(dest, "rb") as f:
                    os.fsync(f.fileno())
        target.mkdir(parents=True, exist_ok=True)
        manifest = {**json.loads((local / MANIFEST).read_text()), "upload": upload}
        try:
            fd = os.open(target / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            shutil.rmtree(target / upload, ignore_errors=True)
            raise FileExistsError(f"version {vid} of {collection} already exists in {self.url}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    def manifest(self, collection: str, vid: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(collection, vid) / MANIFEST).read_text())
        except FileNotFoundError:
            return None

    def download(self, collection: str, vid: str, dest: Path, manifest: dict[str, Any]) -> None:
        import shutil

        src = self._dir(collection, vid) / manifest.get("upload", "")
        for rel in sorted(manifest.get("checksums", {})):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(src / rel, dest / rel)
            except FileNotFoundError:
                raise ArtifactsUnavailable(f"version {vid} of {collection}: {rel} is missing from {self.url}") from None
        with open(dest / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)

    def list(self, collection: str) -> list[dict[str, Any]]:
        base = self.root / "collections" / collection / "versions"
        if not base.exists():
            return []
        return [m for p in sorted(base.iterdir()) if (m := self.manifest(collection, p.name)) is not None]

    def delete(self, collection: str, vid: str) -> None:
        import shutil

        (self._dir(collection, vid) / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self._dir(collection, vid), ignore_errors=True)

    def delete_collection(self, collection: str) -> None:
        import shutil

        shutil.rmtree(self.root / "collections" / collection, ignore_errors=True)

    def put_tree(self, prefix: str, local: Path) -> None:
        import shutil

        shutil.copytree(local, self.root / prefix, dirs_exist_ok=True)

    def get_tree(self, prefix: str, dest: Path) -> None:
        import shutil

        if not (self.root / prefix).is_dir():
            raise ArtifactsUnavailable(f"nothing under {prefix} in {self.url}")
        shutil.copytree(self.root / prefix, dest, dirs_exist_ok=True)

    def delete_tree(self, prefix: str) -> None:
        import shutil

        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise ArtifactsUnavailable(f"artifacts directory {self.url} does not exist")


Artifacts = S3Artifacts | DirArtifacts


def open_artifacts(url: str | None, endpoint: str | None = None) -> Artifacts | None:
    """None for the default (versions in the data dir, nothing else), an object store for ``s3://...``, or a
    shared directory for a path."""
    if not url:
        return None
    if url.startswith("s3://"):
        return S3Artifacts(url, endpoint)
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" in url:
        raise ValueError(f"artifacts URL {url!r}: use s3://BUCKET/PREFIX or a directory")
    Path(url).mkdir(parents=True, exist_ok=True)
    return DirArtifacts(url)


def open_remote(settings: Settings, store: DocumentStore) -> Remote | None:
    """The remote of this process's versions (``settings.artifacts_url``), or None when they live in the data dir."""
    from strop.index.versions import Remote

    artifacts = open_artifacts(settings.artifacts_url, settings.artifacts_endpoint)
    return Remote(artifacts, store) if artifacts is not None else None
