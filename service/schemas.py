"""Request and response bodies of the REST contract (docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scalar = str | int | float | bool | None
MAX_FILTER_KEYS = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IndexOptions(Strict):
    kind: Literal["auto", "flat", "hnsw", "ivf"] = Field("auto", description="auto = flat while small, HNSW past `auto_threshold` vectors")
    auto_threshold: int | None = Field(None, ge=1, description="vectors at which `auto` switches flat -> HNSW")
    hnsw_m: int | None = Field(None, ge=4, le=128, description="HNSW graph degree M (default 32)")
    ef_construction: int | None = Field(None, ge=8, le=2048, description="HNSW build breadth (default 80)")
    ef_search: int | None = Field(None, ge=1, le=4096, description="HNSW search breadth (raised to top_k when smaller)")
    ivf_nlist: int | None = Field(None, ge=1, le=1_000_000, description="IVF lists; default 4*sqrt(n)")
    nprobe: int | None = Field(None, ge=1, le=65536, description="IVF lists probed per query")

    def as_spec(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class CollectionCreate(Strict):
    name: str = Field(..., description="1-63 chars of a-z 0-9 - _, starting with a letter or digit", examples=["docs"])
    modality: Literal["text", "code", "image"] = Field("text", description="what documents hold")
    encoder: str | None = Field(None, description="sentence-transformers model path or hub name; default all-MiniLM-L6-v2 (packaged)")
    index: IndexOptions = Field(default_factory=IndexOptions, description="the FAISS index kind and its parameters")


class VersionInfo(BaseModel):
    id: str = Field(..., description="version id, e.g. v0003")
    created_at: float | None = Field(None, description="Unix time it was written")
    metrics: dict[str, Any] = Field({}, description="what the job that made it measured (before, after, gate)")


class VersionBytes(BaseModel):
    id: str = Field(..., description="version id")
    active: bool = Field(..., description="the version being served")
    bytes: int = Field(..., description="what removing this version frees: disk_bytes + vector_bytes")
    disk_bytes: int = Field(..., description="its directory: manifest, FAISS index and, after a training job, "
                            "the fine-tuned encoder weights")
    vector_bytes: int = Field(..., description="its rows in the document store's per-version vector table "
                              "(documents written after the version was built, encoded by its encoder)")
    vector_rows: int = Field(..., description="how many such rows")


class StorageInfo(BaseModel):
    bytes: int = Field(..., description="all kept versions together")
    retention: int = Field(..., description="STROP_VERSION_RETENTION: besides the active version, this many of the "
                           "newest others are kept (and any a queued or running job builds on); each activation "
                           "removes the rest")
    versions: list[VersionBytes] = Field(..., description="every kept version, oldest first")


class CollectionInfo(BaseModel):
    name: str = Field(..., description="the collection's name")
    modality: str = Field(..., description="text, code or image")
    count: int = Field(..., description="live documents")
    encoder: str = Field(..., description="the base encoder it was created with")
    teacher: str | None = Field(None, description="the collection's teacher (path or name), if any")
    version: VersionInfo = Field(..., description="the active version")
    storage: StorageInfo | None = Field(None, description="GET /collections/{name} only: the bytes each kept "
                                        "version holds")


class VersionEntry(BaseModel):
    """One kept version as GET /collections/{name}/versions lists it."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(..., description="version id")
    created_at: float | None = Field(None, description="Unix time it was written")
    parent: str | None = Field(None, description="the version the job that made it started from")
    job: str | None = Field(None, description="the job that made it (null for a collection's base version)")
    metrics: dict[str, Any] = Field({}, description="what the job that made it measured (before, after, gate)")
    count: int | None = Field(None, description="documents it serves: for the active version, now (writes since "
                              "it was built included); for the others, when they were built")
    built_count: int | None = Field(None, description="vectors in its index when it was built")
    encoder: dict[str, Any] | None = Field(None, description="{path, base} for fine-tuned weights it holds, "
                                           "{ref} for a base model it references")
    index: str | None = Field(None, description="the FAISS index kind it was built as")
    active: bool = Field(..., description="the version being served")
    bytes: int | None = Field(None, description="what removing it frees: disk_bytes + vector_bytes")
    disk_bytes: int | None = Field(None, description="its directory: manifest, FAISS index, encoder weights")
    vector_bytes: int | None = Field(None, description="its rows in the store's per-version vector table")


class VersionList(BaseModel):
    versions: list[VersionEntry] = Field(..., description="every kept version, oldest first")
    active: str = Field(..., description="id of the version being served")


class TeacherSet(Strict):
    teacher: str | None = Field(..., description="a cross-encoder or sentence-transformers bi-encoder: directory or "
                                "hub name (hub names need a network); null removes the collection's teacher",
                                examples=["/models/all-mpnet-base-v2"])


class DocumentIn(Strict):
    id: str = Field(..., min_length=1, max_length=512, description="caller's id, unique per collection")
    text: str | None = Field(None, description="text or source code (stored verbatim)")
    image: str | None = Field(None, description="base64 image bytes (image collections)")
    metadata: dict[str, Any] | None = Field(None, description="JSON object; searchable by equality filters")


class DocumentsPut(Strict):
    documents: list[DocumentIn] = Field(..., description="documents to insert or replace (by id), at most "
                                        "STROP_MAX_DOCUMENTS_PER_REQUEST")


class UpsertResult(BaseModel):
    upserted: int = Field(..., description="documents stored and searchable before this answer")
    truncated: int = Field(0, description="documents longer than the encoder's max_seq_length tokens: stored whole, embedded from their first max_seq_length tokens")


class DocumentOut(BaseModel):
    id: str = Field(..., description="the caller's id")
    text: str | None = Field(None, description="text or source code, verbatim")
    image: str | None = Field(None, description="base64 image bytes (image collections)")
    metadata: dict[str, Any] = Field({}, description="the document's metadata")


class SearchRequest(Strict):
    query: str | None = Field(None, description="query text (text and code collections)")
    image: str | None = Field(None, description="base64 query image (image collections)")
    top_k: int = Field(10, description="hits to return, 1..max_top_k")
    rerank: bool = Field(False, description="rerank the top rerank_depth candidates with the collection's teacher")
    lexical: float | None = Field(None, ge=0.0, le=1.0, description="text and code: add lexical x BM25 (scaled to "
                                  "[0, 1], over the top rerank_depth candidates) to each cosine; default: "
                                  "STROP_CODE_LEXICAL (0) for code collections without rerank, else 0")
    teacher_weight: float | None = Field(None, ge=0.0, le=10.0, description="with `rerank`: instead of the "
                                         "teacher's order, sort by bi-encoder cosine (+ lexical) + teacher_weight x "
                                         "the teacher's score on [0, 1] (sigmoid of a cross-encoder's logit, "
                                         "(cos + 1) / 2 of a bi-encoder's)")
    verify: bool | None = Field(None, description="image collections: re-rank the top candidates by geometric "
                                "verification with local features (default on); false skips it")
    filter: dict[str, Scalar] | None = Field(None, description=(
        f"metadata equality filter; several keys = AND. At most {MAX_FILTER_KEYS} keys, each 1-256 characters "
        "without quotes, backslashes or control characters"))

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        if v is None:
            return v
        if len(v) > MAX_FILTER_KEYS:
            raise ValueError(f"{len(v)} filter keys; at most {MAX_FILTER_KEYS}")
        for key in v:
            if not 1 <= len(key) <= 256 or any(c in key for c in '"\\') or any(ord(c) < 32 for c in key):
                raise ValueError(f"filter key {key[:80]!r} must be 1-256 characters without quotes, backslashes "
                                 "or control characters")
        return v


class Hit(BaseModel):
    id: str = Field(..., description="the document's id")
    score: float = Field(..., description="cosine (text, code); cosine + lexical x BM25 with `lexical`; teacher "
                         "score with `rerank`; their fusion with `rerank` and `teacher_weight`; fused visual+text "
                         "score (image)")
    text: str | None = Field(None, description="the document's text")
    metadata: dict[str, Any] = Field({}, description="the document's metadata")
    scores: dict[str, float] | None = Field(None, description="parts of the score: {bi_encoder, teacher} when "
                                            "reranked, with lexical too when fused; {bi_encoder, lexical} with `lexical`; {visual, text} cosines in "
                                            "image collections, plus {fused, inliers} when verified")


class Match(BaseModel):
    id: str = Field(..., description="the identified reference (brand) document")
    score: float = Field(..., description="its score (fused, plus the verification bonus when verified), at or "
                         "above the threshold")


class SearchResponse(BaseModel):
    hits: list[Hit] = Field(..., description="best first")
    version: str = Field(..., description="the version that answered (its encoder and index match)")
    took_ms: float = Field(..., description="server time for this request, in milliseconds")
    search_id: str | None = Field(None, description="text and code collections: report the hit a user chose "
                                  "with POST /collections/{c}/feedback {search_id, positive_ids}")
    degraded: str | None = Field(None, description="'store_unavailable': the document store did not answer, so "
                                 "the hits carry ids and scores from the loaded version but no text or metadata")
    match: Match | None = Field(None, description="image collections: the best hit when its score reaches the "
                                "open-set threshold, else null (the logo is not in the gallery)")
    threshold: float | None = Field(None, description="image collections: the version's calibrated open-set "
                                    "threshold")
    timings: dict[str, float] | None = Field(None, description="image collections: milliseconds of optional "
                                             "stages, e.g. verify_ms for geometric verification")


class FeedbackIn(Strict):
    query: str | None = Field(None, min_length=1, description="the query a user searched (or give search_id)")
    search_id: str | None = Field(None, min_length=1, max_length=64, description=(
        "the search_id of a search response (text and code collections, kept for a day): the feedback is for "
        "that search's query, which need not be sent again"))
    positive_ids: list[str] = Field(..., min_length=1, description="documents that answered it (the hit used)")
    negative_ids: list[str] = Field(default_factory=list, description="documents shown that did not")


class EvalPair(Strict):
    query: str = Field(..., min_length=1, description="the query text")
    positive_ids: list[str] = Field(..., min_length=1, description="ids of the documents that answer it; each "
                                    "must be in the collection")


class EvaluateRequest(Strict):
    pairs: list[EvalPair] = Field(..., min_length=1, description="judged queries, at most STROP_MAX_EVAL_PAIRS")
    k: int = Field(10, ge=1, le=1000, description="the cut-off of recall@k")
    rerank: bool = Field(False, description="as on search")
    lexical: float | None = Field(None, ge=0.0, le=1.0, description="as on search")
    teacher_weight: float | None = Field(None, ge=0.0, le=10.0, description="as on search")
    per_query: bool = Field(False, description="also answer `queries`: each pair's rank of its first positive "
                            "within k (null when missed), its reciprocal rank and the ids ranked above it")


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="a collection name (its active encoder) or an encoder name")
    input: str | list[str] = Field(..., description="one text or a list of texts")
    encoding_format: Literal["float", "base64"] = Field("float", description="float lists, or base64 of "
                                                         "little-endian float32")
