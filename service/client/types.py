"""The shapes of the API's answers, as TypedDicts: the client returns the JSON as plain dicts.

``total=False`` marks keys the server leaves out when they do not apply.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Modality = Literal["text", "code", "image"]
JobState = Literal["queued", "running", "succeeded", "rejected", "failed", "cancelled"]
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "rejected", "failed", "cancelled")


class VersionRef(TypedDict):
    id: str
    created_at: float | None
    metrics: dict[str, Any]


class VersionBytes(TypedDict):
    id: str
    active: bool
    bytes: int  # what removing it frees: disk_bytes + vector_bytes
    disk_bytes: int
    vector_bytes: int
    vector_rows: int


class StorageInfo(TypedDict):
    bytes: int  # all kept versions together
    retention: int
    versions: list[VersionBytes]


class CollectionInfo(TypedDict):
    name: str
    modality: Modality
    count: int
    encoder: str
    teacher: str | None
    version: VersionRef  # the active one
    storage: NotRequired[StorageInfo | None]  # get_collection only


class Deleted(TypedDict):
    deleted: str


class _DocumentRequired(TypedDict):
    id: str


class Document(_DocumentRequired, total=False):
    text: str | None
    image: str | None  # base64
    metadata: dict[str, Any]


class DocumentRef(TypedDict):
    id: str
    metadata: dict[str, Any]


class DocumentPage(TypedDict):
    documents: list[DocumentRef]
    next: str | None  # pass back as ``after``; None on the last page


class _HitRequired(TypedDict):
    id: str
    score: float
    metadata: dict[str, Any]


class Hit(_HitRequired, total=False):
    text: str | None
    scores: dict[str, float]


class Match(TypedDict):
    id: str
    score: float


class _SearchRequired(TypedDict):
    hits: list[Hit]
    version: str
    took_ms: float


class SearchResult(_SearchRequired, total=False):
    search_id: str  # text and code collections: report a click with feedback(..., search_id=)
    match: Match | None  # image collections: the open-set answer
    threshold: float  # image collections


# keys with "@" need the functional form
Metrics = TypedDict("Metrics", {"mrr@10": float, "recall@1": float, "recall@10": float, "ndcg@10": float,
                                "n": int, "version": str}, total=False)


class FeedbackResult(TypedDict):
    accepted: bool
    id: int


class Embedding(TypedDict):
    object: str
    index: int
    embedding: list[float] | str  # str: base64 little-endian float32 with encoding_format="base64"


class EmbeddingsResponse(TypedDict):
    object: str
    data: list[Embedding]
    model: str
    usage: dict[str, int]


class AutopilotRound(TypedDict):
    round: int
    job_id: str
    state: JobState
    triggers: dict[str, Any]
    feedback_from: int
    feedback_to: int
    yardstick_pairs: int
    reference: float | None
    outcome: dict[str, Any]  # version, activated, before, after, gate, reason
    created_at: float
    finished_at: float | None


class _AutopilotRequired(TypedDict):
    collection: str
    enabled: bool
    state: str  # watching | round_in_flight | backing_off | disabled
    policy: dict[str, Any]
    counts: dict[str, Any]  # feedback, documents, seconds since the last round
    due: dict[str, Any]
    rounds_started: int
    failures_in_a_row: int
    backoff_until: float | None
    rounds: list[AutopilotRound]


class Autopilot(_AutopilotRequired, total=False):
    waiting: str  # why a due round has not started


class JobSubmitted(TypedDict):
    job_id: str
    state: JobState


class Progress(TypedDict, total=False):
    step: int
    total_steps: int
    loss: float | None
    eta_s: float | None
    unit: str  # stages other than training: what step counts ("documents", "teacher pairs")


class Job(TypedDict):
    job_id: str
    collection: str
    kind: str
    state: JobState
    stage: str | None
    progress: Progress | None
    metrics: dict[str, Any] | None  # {"before": {...}, "after": {...}}
    details: dict[str, Any] | None
    version: str | None  # the version the job made
    error: str | None
    created_at: float | None
    started_at: float | None
    finished_at: float | None


class VersionInfo(TypedDict):
    id: str
    created_at: float | None
    parent: str | None  # the version its job started from
    job: str | None  # the job that made it; None for the base version
    metrics: dict[str, Any]
    count: int | None  # vectors in its index when built
    encoder: dict[str, Any] | None  # {path, base} for fine-tuned weights, {ref} for a base model
    index: str | None  # the FAISS index kind it was built as
    active: bool
    bytes: NotRequired[int | None]  # what removing it frees
    disk_bytes: NotRequired[int | None]
    vector_bytes: NotRequired[int | None]


class VersionList(TypedDict):
    versions: list[VersionInfo]  # oldest first
    active: str


class Activated(TypedDict):
    active: str
    previous: str


class SkippedFile(TypedDict):
    path: str
    reason: str


class IngestSummary(TypedDict):
    files: int
    documents: int
    upserted: int
    unchanged: int
    deleted: int
    skipped_files: list[SkippedFile]
    languages: dict[str, dict[str, int]]  # per language: files, definitions, unparsable, generated, too_large...
    vendored_dirs: list[str]  # vendored folders left out (node_modules, vendor, third_party...)
