"""Encoder runtimes: a sentence-transformers model's transformer run by ONNX Runtime or OpenVINO.

The transformer module (the heavy part) is exported once to ONNX with ``torch.onnx`` and cached under
``<cache_dir>/<weights digest>/model.onnx``; tokenisation, pooling and normalisation stay the model's
own sentence-transformers modules, so a runtime changes only who multiplies the matrices. Nothing is
downloaded: the export reads the weights already loaded.

sentence-transformers' own ``backend="onnx"|"openvino"`` needs ``optimum`` / ``optimum-intel``, whose
releases pin transformers 4.x (and optimum-intel a CUDA build of torch); exporting with torch and
running the file with ``onnxruntime`` / ``openvino`` directly keeps strop on the transformers it ships
with, at the same numbers (cosine >= 0.9999 to fp32 torch is checked on every load).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("strop.backends")

BACKENDS = ("torch", "onnx", "openvino")
EXPORT_VERSION = "1"  # part of the cache key: bump when the exported graph changes
KEEP_EXPORTS = 8  # exports kept per cache directory, most recently used first (each trained version adds one)
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class BackendUnavailable(RuntimeError):
    """The model cannot run on this backend (architecture not exportable, runtime not installed)."""


def transformer_of(model: Any) -> Any:
    """The Hugging Face model inside a sentence-transformers text model, or raise BackendUnavailable."""
    try:
        first = model[0]
    except Exception as e:  # noqa: BLE001 - not a module list
        raise BackendUnavailable(f"not a sentence-transformers pipeline: {type(e).__name__}") from e
    auto = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if auto is None or not isinstance(auto, torch.nn.Module):
        raise BackendUnavailable(f"first module {type(first).__name__} has no transformer to export")
    return auto


def weights_digest(model: Any) -> str:
    """A digest of the transformer's weights and config: the cache key of its exported graph."""
    auto = transformer_of(model)
    h = hashlib.blake2b(digest_size=12)
    h.update(EXPORT_VERSION.encode())
    h.update(type(auto).__name__.encode())
    cfg = getattr(auto, "config", None)
    if cfg is not None:
        h.update(cfg.to_json_string(use_diff=False).encode())
    for name, tensor in auto.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Exportable(torch.nn.Module):
    """The transformer with keyword inputs bound to positions, returning token embeddings."""

    def __init__(self, auto: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.auto = auto
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.auto(**dict(zip(self.names, args, strict=True)), return_dict=True)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def export_onnx(model: Any, cache_dir: str | Path) -> tuple[Path, tuple[str, ...]]:
    """The model's transformer as ONNX under ``cache_dir`` (exported on first use, then reused).

    Returns the file and the input names it takes. Written to a temporary name and renamed, so a crash
    mid-export leaves no half file under the final name, and concurrent processes may race safely."""
    auto = transformer_of(model)
    digest = weights_digest(model)
    folder = Path(cache_dir) / digest
    path = folder / "model.onnx"
    sample = model.preprocess(["an example sentence", "a second, somewhat longer example sentence"]) \
        if hasattr(model, "preprocess") else model.tokenize(["an example sentence", "a second example"])
    names = tuple(k for k in _INPUTS if k in sample)
    if path.exists():
        os.utime(folder)  # most recently used: kept by prune_exports
        return path, names
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".model.{os.getpid()}.{threading.get_ident()}.onnx"
    wrapped = _Exportable(auto, names).eval()
    args = tuple(sample[k].to("cpu") for k in names)
    try:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapped, args, str(tmp), input_names=list(names), output_names=["token_embeddings"],
                    dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*names, "token_embeddings")},
                    opset_version=17, dynamo=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        os.replace(tmp, path)
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure means "run it on torch"
        tmp.unlink(missing_ok=True)
        raise BackendUnavailable(f"ONNX export failed: {type(e).__name__}: {e}"[:300]) from e
    log.info("exported %s to %s", type(auto).__name__, path)
    prune_exports(Path(cache_dir), keep=KEEP_EXPORTS, current=folder)
    return path, names


def prune_exports(cache_dir: Path, keep: int = KEEP_EXPORTS, current: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` most recently used exports (never ``current``): every version trained with
    new weights adds one, and a removed export is only re-made if that version is loaded again. Runtimes
    read their file when they open, so a loaded encoder does not need it afterwards."""
    import shutil

    folders = [p for p in cache_dir.iterdir() if p.is_dir() and p != current and (p / "model.onnx").exists()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = folders[max(0, keep - 1):]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


class Runtime:
    """Runs the exported transformer: ``run(features) -> token embeddings`` (float32, batch x tokens x dim).

    Not re-entrant: the owning Encoder serialises calls under its lock."""

    name = "base"
    precision = "fp32"

    def __init__(self, path: Path, names: tuple[str, ...], threads: int):
        self.path = path
        self.names = names
        self.threads = max(1, threads)

    def run(self, features: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _feed(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for k in self.names:
            v = features[k]
            out[k] = (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.int64, copy=False)
        return out


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(self, path: Path, names: tuple[str, ...], threads: int):
        super().__init__(path, names, threads)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is not installed") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, features: dict[str, Any]) -> np.ndarray:
        return self.session.run(None, self._feed(features))[0]


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(self, path: Path, names: tuple[str, ...], threads: int, precision: str = "fp32"):
        super().__init__(path, names, threads)
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailable("openvino is not installed") from e
        self.precision = precision
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        })
        self.request = compiled.create_infer_request()

    def run(self, features: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.request.infer(self._feed(features))[0], dtype=np.float32)


def make_runtime(backend: str, model: Any, cache_dir: str | Path, threads: int | None = None,
                 precision: str = "fp32") -> Runtime:
    """Export (or reuse) the model's graph and open it on ``backend`` (``onnx`` or ``openvino``)."""
    if backend not in ("onnx", "openvino"):
        raise ValueError(f"no runtime for backend {backend!r}")
    path, names = export_onnx(model, cache_dir)
    threads = threads or max(1, torch.get_num_threads())
    try:
        if backend == "onnx":
            return OnnxRuntime(path, names, threads)
        return OpenVinoRuntime(path, names, threads, precision)
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a runtime that cannot open the graph is unavailable
        raise BackendUnavailable(f"{backend} could not load {path.name}: {type(e).__name__}: {e}"[:300]) from e
