"""Search, evaluation and relevance feedback."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any

import numpy as np
import orjson
from anyio import to_thread
from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from strop.index.collection import doc_text
from strop.index.image.decode import ImageError, decode_image
from strop.index.image.verify import FeatureTable, geometric_bonus, match_candidates, query_features
from strop.index.metrics import evaluate_rankings, query_ranks
from strop.index.settings import Settings
from strop.index.store import Document, DocumentStore
from strop.service.deps import CollectionDep, ManagerDep, Read, SearchLogDep, SettingsDep, Write
from strop.service.errors import ApiError, error_responses, image_error
from strop.service.manager import CollectionManager
from strop.service.ranking import check_teacher, lexical_weight, reorder
from strop.service.schemas import EvaluateRequest, FeedbackIn, Hit, SearchRequest, SearchResponse
from strop.service.state import CollectionState, Served
from strop.service.strictjson import StrictJSONRoute
from strop.service.telemetry import Timer

router = APIRouter(route_class=StrictJSONRoute, tags=["search"], responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429))


def check_query(query: str | None, image: str | None, st: CollectionState, settings: Settings) -> str:
    if image is not None:
        raise ApiError(422, "wrong_modality", f"collection {st.record.name!r} holds {st.record.modality}: send 'query' text")
    if query is None or not query.strip():
        raise ApiError(422, "empty_query", "query must be a non-empty string")
    if len(query) > settings.max_query_chars:
        raise ApiError(413, "query_too_long", f"query has {len(query)} characters; max_query_chars={settings.max_query_chars}")
    return query


def check_top_k(top_k: int, settings: Settings) -> None:
    if not 1 <= top_k <= settings.max_top_k:
        raise ApiError(422, "bad_top_k", f"top_k must be between 1 and max_top_k={settings.max_top_k}; got {top_k}")


Found = tuple[np.ndarray, np.ndarray, dict[int, Document]]  # scores, rids, documents by rid


def _lookup(store: DocumentStore, scores: np.ndarray, ids: np.ndarray,
            id_map: dict[str, int] | None = None) -> list[Found]:
    """Per-query results of a block search, with one store lookup for the whole block. When the store does not
    answer, the hits are named from ``id_map`` (the ids this process follows), without text or metadata."""
    wanted = sorted({int(r) for r in ids.ravel() if r >= 0})
    try:
        docs = store.by_rids(wanted)
    except store.errors:
        if id_map is None:
            raise
        docs = _named_hits(id_map, wanted)
    return [(scores[i], ids[i], docs) for i in range(scores.shape[0])]


DEGRADED = -1  # Document.seq of a hit named without the store


def _named_hits(id_map: dict[str, int], rids: list[int]) -> dict[int, Document]:
    wanted = set(rids)
    return {rid: Document(id=doc_id, rid=rid, seq=DEGRADED) for doc_id, rid in list(id_map.items()) if rid in wanted}


async def search_docs(served: Served, store: DocumentStore, query: str, k: int, allow: np.ndarray | None,
                      id_map: dict[str, int] | None = None) -> Found:
    """Encode through the model's micro-batcher, search the served index and fetch the hits' documents.

    Unfiltered queries that share a version and ``k`` are searched as one block in the FAISS pool,
    and their documents read there too: no extra thread hop per request.
    """
    live = served.live
    if allow is None:
        return await served.model.batcher.search(query, (id(live), k),
                                                 lambda block: _lookup(store, *live.search(block, k), id_map))
    vec = await served.model.batcher.encode_query(query)
    return (await to_thread.run_sync(lambda: _lookup(store, *live.search(vec[None, :], k, allow))))[0]


@router.post("/collections/{name}/search", response_model=SearchResponse, response_model_exclude_none=True,
             dependencies=[Read])
async def search(body: SearchRequest, st: CollectionDep, manager: ManagerDep, settings: SettingsDep,
                 searchlog: SearchLogDep) -> Response:
    """Nearest documents to `query` (cosine). `filter` keeps documents whose metadata equals every given key."""
    timer = Timer()
    check_top_k(body.top_k, settings)
    if st.record.modality == "image":
        return await image_search(body, st, manager, timer)
    if body.verify is not None:
        raise ApiError(422, "verify_unsupported", "verify applies to image collections; leave it out for "
                       f"{st.record.modality} collections")
    query = check_query(body.query, body.image, st, settings)
    lexical = lexical_weight(body.rerank, body.lexical, body.teacher_weight, st, settings)
    check_teacher(body.rerank, st)
    served = st.served  # one reference for the whole request: encoder and index match
    allow = None
    if body.filter:
        allow = await to_thread.run_sync(manager.store.filter_rids, st.record.name, body.filter)
    depth = max(body.top_k, settings.rerank_depth) if body.rerank or lexical else body.top_k
    scores, rids, docs = await search_docs(served, manager.store, query, depth, allow, st.id_map)
    valid = [(float(s), int(r)) for s, r in zip(scores, rids, strict=True) if r >= 0 and int(r) in docs]
    if (body.rerank or lexical) and valid:
        teacher = await to_thread.run_sync(manager.teacher, st.record.name) if body.rerank else None
        (ranked,) = await reorder([query], [[doc_text(docs[r]) for _, r in valid]],
                                  [np.array([s for s, _ in valid], np.float32)],
                                  lexical=lexical, teacher=teacher, teacher_weight=body.teacher_weight)
        hits = [_hit(docs[valid[i][1]], float(ranked.score[i]), {k: float(v[i]) for k, v in ranked.parts.items()})
                for i in ranked.order[: body.top_k]]
    else:
        hits = [_hit(docs[r], s) for s, r in valid]
    out: dict[str, Any] = {"hits": hits, "version": served.id}
    search_id = searchlog.record(st.record.name, query)
    if search_id is not None:
        out["search_id"] = search_id
    if any(d.seq == DEGRADED for d in docs.values()):
        out["degraded"] = "store_unavailable"
    out["took_ms"] = round(timer.ms, 3)
    # the SearchResponse shape (documented as the response model), written by orjson: validating and encoding
    # ten pydantic hits per answer cost more than a tenth of the whole request at high concurrency
    return Response(orjson.dumps(out), media_type="application/json")


def _hit(doc: Document, score: float, scores: dict[str, float] | None = None) -> dict[str, Any]:
    hit: dict[str, Any] = {"id": doc.id, "score": score}
    if doc.text is not None:
        hit["text"] = doc.text
    hit["metadata"] = doc.metadata if doc.metadata is not None else {}
    if scores is not None:
        hit["scores"] = scores
    return hit


def verify_hits(img: Any, rids: list[int], table: FeatureTable,
                store: DocumentStore) -> tuple[np.ndarray, np.ndarray, float]:
    """The query's inliers and ratio-tested matches against each candidate's reference features, and
    the milliseconds it took."""
    t = time.perf_counter()
    feats = table.get(rids, store)
    inliers, matches = match_candidates(query_features(img, table.config), [feats.get(r) for r in rids],
                                        table.config)
    return inliers, matches, round((time.perf_counter() - t) * 1000, 3)


async def image_search(body: SearchRequest, st: CollectionState, manager: CollectionManager,
                       timer: Timer) -> JSONResponse:
    """Identify the image: ranked hits with ``scores: {visual, text}``, and the open-set ``match``.

    With verification (the default; ``"verify": false`` turns it off), the top candidates are
    re-ranked by fused score plus a bonus for geometrically consistent local-feature matches
    (``strop.index.image.verify``), and hits also carry ``scores: {fused, inliers}``. ``match`` is
    the best hit when its score reaches the version's calibrated threshold, else ``null`` (the
    logo is not in the gallery).
    """
    name = st.record.name
    if body.query is not None:
        raise ApiError(422, "wrong_modality", f"collection {name!r} holds images: send 'image' (base64), not 'query'")
    if body.image is None:
        raise ApiError(422, "missing_image", "image collections are searched with 'image' (base64 PNG/JPEG/WebP/SVG)")
    if body.rerank or body.lexical or body.teacher_weight is not None:
        raise ApiError(422, "rerank_unsupported", "rerank, lexical and teacher_weight are for text and code collections")
    try:
        raw = base64.b64decode(body.image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", "image is not valid base64") from None
    try:
        img = await to_thread.run_sync(decode_image, raw)
    except ImageError as e:
        raise image_error(e, "image") from None
    served = st.served
    allow = None
    if body.filter:
        allow = await to_thread.run_sync(manager.store.filter_rids, name, body.filter)
    qvec = await served.model.batcher.encode_query(img)
    k = body.top_k
    encoder = served.model.encoder
    table = served.version.extra.get("local_features")
    verify = table is not None and body.verify is not False
    depth = max(k, table.config.top_k) if verify else k

    def run() -> tuple[np.ndarray, np.ndarray, dict[int, Document], np.ndarray]:
        # one row, or one per crop of a multi-crop model: each document keeps its best crop's score
        scores, ids = encoder.search_crops(lambda rows, kk: served.live.search(rows, kk, allow), qvec, depth)
        rids = [int(r) for r in ids if r >= 0]
        return scores, ids, manager.store.by_rids(rids), served.live.vectors(rids)

    scores, rids, docs, rows = await to_thread.run_sync(run)
    valid = [(float(s), int(r)) for s, r in zip(scores, rids, strict=True) if r >= 0]
    vis, txt = encoder.split(qvec, rows) if len(rows) else (np.zeros(0), np.zeros(0))
    parts = [{"visual": round(float(vis[i]), 6), "text": round(float(txt[i]), 6)} for i in range(len(valid))]
    timings: dict[str, float] = {}
    threshold = encoder.threshold
    if verify and valid:
        inliers, matches, timings["verify_ms"] = await to_thread.run_sync(
            verify_hits, img, [r for _, r in valid], table, manager.store)
        bonus = geometric_bonus(inliers, table.config, matches)
        for i, (s, r) in enumerate(valid):
            parts[i].update({"fused": s, "inliers": float(inliers[i])})
            valid[i] = (s + float(bonus[i]), r)
        order = sorted(range(len(valid)), key=lambda i: -valid[i][0])
        valid, parts = [valid[i] for i in order], [parts[i] for i in order]
        threshold = encoder.verify_threshold
    hits = [Hit(id=docs[r].id, score=s, text=docs[r].text, metadata=docs[r].metadata, scores=parts[i])
            for i, (s, r) in enumerate(valid) if r in docs][:k]
    match = None
    if hits and hits[0].score >= threshold:
        match = {"id": hits[0].id, "score": hits[0].score}
    out = SearchResponse(hits=hits, version=served.id, took_ms=round(timer.ms, 3),
                         timings=timings or None).model_dump(exclude_none=True)
    out["match"] = match
    out["threshold"] = threshold
    return JSONResponse(out)


@router.post("/collections/{name}/evaluate", dependencies=[Read])
async def evaluate(body: EvaluateRequest, st: CollectionDep, manager: ManagerDep, settings: SettingsDep) -> dict[str, Any]:
    """MRR@10, recall@1, recall@k and nDCG@10 of the active version on the given (query, positive_ids) pairs;
    with `per_query`, each query's rank too."""
    if st.record.modality == "image":
        raise ApiError(422, "wrong_modality", "evaluate takes text queries; an image collection's views jobs "
                       "report top-1/top-5 identification and open-set metrics in the job record")
    if len(body.pairs) > settings.max_eval_pairs:
        raise ApiError(413, "too_many_pairs", f"{len(body.pairs)} pairs; max_eval_pairs={settings.max_eval_pairs}")
    for i, p in enumerate(body.pairs):
        if len(p.query) > settings.max_query_chars:
            raise ApiError(413, "query_too_long", f"pairs[{i}].query exceeds max_query_chars={settings.max_query_chars}")
    lexical = lexical_weight(body.rerank, body.lexical, body.teacher_weight, st, settings)
    check_teacher(body.rerank, st)
    wanted = list(dict.fromkeys(i for p in body.pairs for i in p.positive_ids))
    found = await to_thread.run_sync(manager.store.get_many, st.record.name, wanted)
    missing = [i for i in wanted if i not in found]
    if missing:  # a positive that cannot be retrieved would score 0 and hide in the mean
        raise ApiError(422, "unknown_documents", f"{len(missing)} positive_ids are not in collection "
                       f"{st.record.name!r}: {missing[:10]}; fix the pairs or upsert those documents first")
    served = st.served
    reorder_needed = body.rerank or lexical > 0
    k = max(body.k, 10, settings.rerank_depth if reorder_needed else 0)
    vecs = await served.model.batcher.encode_bulk([p.query for p in body.pairs])
    scores, rids = await to_thread.run_sync(served.live.search, vecs, k)
    flat = sorted({int(r) for r in rids.ravel() if r >= 0})
    docs = await to_thread.run_sync(lambda: manager.store.by_rids(flat, with_text=reorder_needed))
    kept = [[(int(r), float(s)) for s, r in zip(srow, row, strict=True) if int(r) in docs]
            for srow, row in zip(scores, rids, strict=True)]
    dense = [np.array([s for _, s in row], np.float32) for row in kept]
    if reorder_needed:
        teacher = await to_thread.run_sync(manager.teacher, st.record.name) if body.rerank else None
        ranked = await reorder([p.query for p in body.pairs], [[doc_text(docs[r]) for r, _ in row] for row in kept],
                               dense, lexical=lexical, teacher=teacher, teacher_weight=body.teacher_weight)
        orders = [r.order for r in ranked]
    else:
        orders = [np.argsort(-d, kind="stable") for d in dense]
    rankings = [[docs[row[i][0]].id for i in order] for row, order in zip(kept, orders, strict=True)]
    out = evaluate_rankings(rankings, [p.positive_ids for p in body.pairs], k=body.k)
    out["version"] = served.id
    if body.per_query:
        ranks = query_ranks(rankings, [p.positive_ids for p in body.pairs], k=body.k)
        out["queries"] = [{"query": p.query, "positive_ids": p.positive_ids, **r}
                          for p, r in zip(body.pairs, ranks, strict=True)]
    return out


@router.post("/collections/{name}/feedback", status_code=status.HTTP_202_ACCEPTED, dependencies=[Write])
async def feedback(body: FeedbackIn, st: CollectionDep, manager: ManagerDep, settings: SettingsDep,
                   searchlog: SearchLogDep) -> dict:
    """Record which documents answered a query (and which did not); `train.source: "feedback"` and the
    autopilot learn from it. A click on a search hit: `{search_id, positive_ids: [hit id]}`."""
    query = body.query
    if body.search_id is not None:
        found_search = await to_thread.run_sync(searchlog.lookup, body.search_id)
        while found_search is None and searchlog.in_flight(body.search_id):  # issued elsewhere a moment ago
            await asyncio.sleep(0.05)  # on the loop, holding no worker thread
            found_search = await to_thread.run_sync(searchlog.lookup, body.search_id)
        if found_search is None:
            raise ApiError(422, "unknown_search", f"search_id {body.search_id!r} is unknown or expired (kept a "
                           "day): send the query instead")
        if found_search[0] != st.record.name:
            raise ApiError(422, "unknown_search", f"search_id {body.search_id!r} is a search of another collection")
        if query is not None and query != found_search[1]:
            raise ApiError(422, "search_id_mismatch", "query differs from the query of search_id: send one of them")
        query = found_search[1]
    if query is None:
        raise ApiError(422, "missing_query", "give the query, or the search_id of the search the feedback is for")
    if len(query) > settings.max_query_chars:
        raise ApiError(413, "query_too_long", f"query exceeds max_query_chars={settings.max_query_chars}")
    ids = body.positive_ids + body.negative_ids
    found = await to_thread.run_sync(manager.store.get_many, st.record.name, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise ApiError(422, "unknown_documents", f"documents not in collection {st.record.name!r}: {missing[:10]}")
    fid = await to_thread.run_sync(manager.store.add_feedback, st.record.name, query,
                                   body.positive_ids, body.negative_ids)
    return {"accepted": True, "id": fid}
