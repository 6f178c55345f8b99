"""Submission-time checks of a job against the collection's data."""

from __future__ import annotations

from pathlib import Path

from strop.index.store import CollectionRecord, DocumentStore
from strop.service.errors import ApiError
from strop.trainer.contract import JobSpec


def check_job(spec: JobSpec, record: CollectionRecord, store: DocumentStore) -> None:
    source = spec.train.source or "pairs"
    if source == "docstrings" and record.modality != "code":
        raise ApiError(422, "invalid_job", "train.source 'docstrings' needs a code collection")
    if source == "views" and record.modality != "image":
        raise ApiError(422, "invalid_job", "train.source 'views' needs an image collection")
    if record.modality == "image":
        if spec.kind != "encoder" or source != "views":
            raise ApiError(422, "invalid_job", "image collections train with {\"train\": {\"source\": \"views\"}} "
                           "(encoder jobs); text pairs and teacher jobs are for text and code collections")
        if store.count(record.name) < 3:
            raise ApiError(422, "invalid_job", "a views job needs at least 3 reference images (brands): some are "
                           "held out as unseen brands to calibrate the open-set threshold")
        return
    if source == "feedback" and not store.list_feedback(record.name):
        raise ApiError(422, "invalid_job", "train.source 'feedback' but the collection has no feedback yet: "
                       "POST /collections/{name}/feedback first")
    if spec.needs_teacher() and not (spec.teacher or record.teacher):
        raise ApiError(422, "no_teacher", "mining.denoise, positives.semantic, distill and train.queries need a "
                       "teacher: pass "
                       "'teacher' (a cross-encoder or bi-encoder path/name) or first run a {\"kind\": \"teacher\"} job")
    if spec.teacher and spec.teacher.startswith(("/", ".")) and not Path(spec.teacher).exists():
        raise ApiError(422, "bad_teacher", f"teacher path {spec.teacher!r} does not exist")
    if spec.fuse and spec.fuse.startswith(("/", ".", "~")) and not Path(spec.fuse).expanduser().exists():
        raise ApiError(422, "bad_teacher", f"fuse path {spec.fuse!r} does not exist")
    ids: set[str] = set()
    if spec.train.pairs:
        ids.update(p.positive_id for p in spec.train.pairs)
    if spec.eval and spec.eval.pairs:
        for p in spec.eval.pairs:
            ids.update(p.positive_ids)
    if ids:
        found = store.get_many(record.name, ids)
        missing = sorted(ids - set(found))
        if missing:
            raise ApiError(422, "unknown_documents",
                           f"{len(missing)} positive ids are not in collection {record.name!r}: {missing[:10]}")
    if spec.train.pairs and spec.eval and spec.eval.holdout and len(spec.train.pairs) < 4:
        raise ApiError(422, "invalid_job", "too few pairs to hold some out: give eval.pairs or more train.pairs")
    if store.count(record.name) < 2:
        raise ApiError(422, "invalid_job", "the collection needs at least 2 documents to train on")
