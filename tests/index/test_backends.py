"""Encoder backends: the transformer exported to ONNX and run by ONNX Runtime / OpenVINO gives the torch
embeddings, the export is made once per weights, ``auto`` never serves a runtime that drifts, and what cannot
run elsewhere falls back to torch. Real exports, real runtimes, the tiny encoder."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from strop.index.backends import BackendUnavailable, export_onnx, make_runtime, weights_digest
from strop.index.encoder import CALIBRATION_TEXTS, Encoder, build_tiny_encoder

TEXTS = [*CALIBRATION_TEXTS, "a much longer text " * 40, "émigré café naïve"]


@pytest.fixture(scope="module")
def torch_encoder(tiny_encoder_path: str) -> Encoder:
    return Encoder.load(tiny_encoder_path, precision="fp32", backend="torch")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_runtime_matches_torch(tiny_encoder_path, torch_encoder, backend, tmp_path) -> None:
    enc = Encoder.load(tiny_encoder_path, precision="fp32", backend=backend, cache_dir=tmp_path)
    assert enc.backend == backend and enc.precision == "fp32"
    assert enc.fingerprint().endswith(f":{backend}:fp32")
    got = enc.encode(TEXTS)
    ref = torch_encoder.encode(TEXTS)
    assert got.vectors.shape == ref.vectors.shape and got.vectors.dtype == np.float32
    assert float((got.vectors * ref.vectors).sum(axis=1).min()) >= 0.9999
    assert got.truncated == ref.truncated == 1
    # batching and order: one text at a time gives the same rows
    one = np.stack([enc.encode([t]).vectors[0] for t in TEXTS[:4]])
    assert np.allclose(one, got.vectors[:4], atol=1e-4)


def test_export_is_cached_per_weights(tiny_encoder_path, torch_encoder, tmp_path) -> None:
    path, names = export_onnx(torch_encoder.model, tmp_path)
    assert path.parent.name == weights_digest(torch_encoder.model)
    assert set(names) == {"input_ids", "attention_mask", "token_type_ids"}
    mtime = path.stat().st_mtime_ns
    again, _ = export_onnx(torch_encoder.model, tmp_path)
    assert again == path and path.stat().st_mtime_ns == mtime  # reused, not re-exported
    assert not [p for p in tmp_path.rglob(".model.*")]  # no temporary left behind
    other = Encoder.load(str(build_tiny_encoder(tmp_path / "other", seed=3)), precision="fp32")
    assert weights_digest(other.model) != weights_digest(torch_encoder.model)
    assert export_onnx(other.model, tmp_path)[0] != path


def test_old_exports_are_pruned(torch_encoder, tmp_path) -> None:
    import os

    from strop.index.backends import prune_exports

    for i in range(5):  # stand-ins for exports of earlier versions' weights, oldest first
        d = tmp_path / f"old{i}"
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x")
        os.utime(d, (1000 + i, 1000 + i))
    path, _ = export_onnx(torch_encoder.model, tmp_path)
    assert path.exists()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 6  # within KEEP_EXPORTS (8): nothing removed yet
    removed = prune_exports(tmp_path, keep=3, current=path.parent)
    assert sorted(p.name for p in removed) == ["old0", "old1", "old2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.parent.name, "old3", "old4"])


def test_auto_keeps_a_fast_candidate_that_agrees(tiny_encoder_path, torch_encoder, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="strop.encoder"):
        enc = Encoder.load(tiny_encoder_path, precision="fp32", backend="auto", cache_dir=tmp_path)
    measured = [r.getMessage() for r in caplog.records if "calibration" in r.getMessage()]
    assert any("torch/fp32" in m for m in measured) and any("onnx/fp32" in m for m in measured)
    assert any("openvino/fp32" in m for m in measured)
    assert enc.backend in ("torch", "onnx", "openvino")
    ref = torch_encoder.encode(CALIBRATION_TEXTS).vectors
    assert float((enc.encode(CALIBRATION_TEXTS).vectors * ref).sum(axis=1).min()) >= 0.9999


def test_auto_never_serves_a_drifting_candidate(torch_encoder, tmp_path) -> None:
    """A candidate whose embeddings moved is refused even when it is the only fast one."""
    drifted_model = build_tiny_encoder(tmp_path / "drift", seed=11)
    drifted = Encoder.load(str(drifted_model), precision="fp32")
    runtime = make_runtime("openvino", drifted.model, tmp_path / "cache")
    fast_but_wrong = Encoder(torch_encoder.model, torch_encoder.name, "fp32", "cpu", runtime=runtime)
    assert torch_encoder.calibrate([torch_encoder, fast_but_wrong]) is torch_encoder
    assert torch_encoder.calibrate([fast_but_wrong]) is fast_but_wrong  # asked for explicitly: served, warned


def test_unexportable_model_falls_back_to_torch(torch_encoder, tmp_path, caplog) -> None:
    class NotAPipeline(torch.nn.Module):
        max_seq_length = 128
        tokenizer = None

        def get_sentence_embedding_dimension(self) -> int:
            return 8

    with pytest.raises(BackendUnavailable):
        export_onnx(NotAPipeline(), tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        torch_encoder.with_backend("tensorrt", "fp32", tmp_path)
    with pytest.raises(ValueError, match="unknown precision"):
        torch_encoder.with_backend("onnx", "int4", tmp_path)

    broken = Encoder(NotAPipeline(), "broken", "fp32", "cpu")
    with caplog.at_level(logging.WARNING, logger="strop.encoder"):
        assert broken.with_backend("onnx", "fp32", tmp_path) is broken
    assert any("unavailable" in r.getMessage() for r in caplog.records)


def test_half_precisions_on_the_cpu(torch_encoder) -> None:
    """fp16 is what CUDA's auto tries; on the CPU it runs (slowly) and stays close to fp32."""
    ref = torch_encoder.encode(CALIBRATION_TEXTS).vectors
    for precision in ("fp16", "bf16"):
        enc = torch_encoder.with_precision(precision)
        if precision == "bf16" and enc is torch_encoder:
            continue  # this CPU has no bf16
        assert enc.precision == precision and next(enc.model.parameters()).dtype != torch.float32
        assert float((enc.encode(CALIBRATION_TEXTS).vectors * ref).sum(axis=1).min()) >= 0.99
    assert torch_encoder.with_precision("auto").precision in ("fp32", "bf16")  # never fp16 on a CPU


def test_service_serves_on_a_runtime(make_client) -> None:
    client = make_client(encoder_backend="openvino")
    assert client.post("/collections", json={"name": "docs"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"document {i} about subject {i % 5}"} for i in range(30)]
    assert client.put("/collections/docs/documents", json={"documents": docs}).status_code == 200
    r = client.post("/collections/docs/search", json={"query": "document 12 about subject 2", "top_k": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "d12"
    loaded = client.app.state.manager.models.loaded()
    assert [lm.encoder.backend for lm in loaded] == ["openvino"]
    assert (client.app.state.settings.data_dir / "backends").is_dir()
