"""The on-disk teacher embedding cache: shared between processes, bounded, never a source of failure."""

from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pytest

from strop.index.embcache import EmbeddingCache, model_fingerprint, text_key
from strop.index.teacher import BiEncoderScorer

DIM = 8


class HashEncoder:
    """A deterministic stand-in that records what it was asked to embed (the scorer's cache logic is
    what is under test here; real-model scoring is covered in tests/trainer/test_teacher.py)."""

    dim = DIM

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, batch_size=32):
        from strop.index.encoder import EncodeResult

        self.seen.extend(texts)
        out = np.stack([np.random.default_rng(int.from_bytes(text_key(t)[:4], "little")).standard_normal(DIM)
                        for t in texts]).astype(np.float32)
        return EncodeResult(out / np.linalg.norm(out, axis=1, keepdims=True), 0)


DOCS = [f"document number {i} about topic {i % 3}" for i in range(20)]


def test_a_new_scorer_reads_what_another_embedded(tmp_path):
    """A new work horse (or a restarted API) finds every document already embedded."""
    first_enc = HashEncoder()
    first = BiEncoderScorer(first_enc, "t", disk=EmbeddingCache(tmp_path / "m.sqlite", DIM))
    pairs = [("some query", d) for d in DOCS]
    expected = first.score(pairs)
    assert len(first_enc.seen) == 1 + len(DOCS)

    second_enc = HashEncoder()
    disk = EmbeddingCache(tmp_path / "m.sqlite", DIM)
    second = BiEncoderScorer(second_enc, "t", disk=disk)
    np.testing.assert_allclose(second.score(pairs), expected, atol=1e-6)
    assert second_enc.seen == ["some query"]  # queries are always embedded; no document was
    assert disk.hits == len(DOCS) and disk.misses == 0
    # from memory now: the disk is not asked again
    second.score(pairs)
    assert disk.hits == len(DOCS)


def test_bounded_oldest_written_go_first(tmp_path):
    cache = EmbeddingCache(tmp_path / "m.sqlite", DIM, max_entries=5)
    keys = [text_key(d) for d in DOCS[:8]]
    for k in keys:
        cache.put([(k, np.ones(DIM, np.float32))])
    assert len(cache) == 5
    assert set(cache.get(keys)) == set(keys[3:])


def test_damage_is_a_miss_never_an_error(tmp_path):
    path = tmp_path / "m.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    disk = EmbeddingCache(path, DIM)
    assert disk.enabled and list(tmp_path.glob("m.sqlite.damaged-*"))  # set aside, started afresh
    scorer = BiEncoderScorer(HashEncoder(), "t", disk=disk)
    assert scorer.score([("q", DOCS[0])]).shape == (1,)
    assert len(disk) == 1
    # a row of the wrong width (say, a file reused for another model) is a miss, not a wrong vector
    cache = EmbeddingCache(tmp_path / "w.sqlite", DIM)
    cache.put([(text_key("x"), np.ones(DIM * 2, np.float32))])
    assert cache.get([text_key("x")]) == {}
    # an unwritable location: the scorer works without a disk cache
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = EmbeddingCache(blocker / "sub" / "m.sqlite", DIM)
    assert not broken.enabled
    assert BiEncoderScorer(HashEncoder(), "t", disk=broken).score([("q", DOCS[1])]).shape == (1,)


def _writer(path: str, start: int, n: int) -> None:
    cache = EmbeddingCache(path, DIM)
    for i in range(start, start + n):
        cache.put([(text_key(f"doc {i}"), np.full(DIM, i, np.float32))])


def test_processes_write_at_once(tmp_path):
    """The API's rerank thread and a worker's teacher stage write the same file concurrently."""
    path = str(tmp_path / "m.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s, 150)) for s in (0, 150, 300)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = {text_key(f"doc {i}"): i for i in range(450)}
    got = EmbeddingCache(path, DIM).get(list(ids))
    assert len(got) == 450 and all(v[0] == ids[k] for k, v in got.items())


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 20_000)  # ~5 MB: both ends are sampled
    return d


def test_fingerprint_follows_the_weights_not_the_path(model_dir, tmp_path):
    fp = model_fingerprint(model_dir, "bf16", 384)
    copy = tmp_path / "elsewhere"
    shutil.copytree(model_dir, copy)
    assert model_fingerprint(copy, "bf16", 384) == fp  # the same model on another volume
    assert model_fingerprint(model_dir, "fp32", 384) != fp  # other precision, other vectors
    assert model_fingerprint(model_dir, "bf16", 256) != fp
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # a retrained head changes the tail of the file
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(copy, "bf16", 384) != fp
    assert model_fingerprint("org/some-hub-model", "bf16") != model_fingerprint("org/other-model", "bf16")
