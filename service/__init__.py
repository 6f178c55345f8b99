"""strop's API process: FastAPI app, routes, micro-batching and the CLI.

Importing this package sets two OpenMP/oneDNN defaults before torch or FAISS load (a user's own
environment wins):

* ``OMP_WAIT_POLICY=PASSIVE``: by default OpenMP worker threads spin for a while after each
  parallel region. A server runs many small forward passes and searches back to back, next to
  HTTP threads, so spinning threads steal the cores the event loop and the other pool need
  (bench/serving.py measured 187 -> 280 QPS at 32 connections on 2 cores with passive waiting).
* ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=256``: oneDNN keeps one compiled kernel per input shape;
  query batches come in many (batch, length) shapes, and the default cache of 1024 let resident
  memory creep up under query load (bf16 serving: 755 -> 1,432 MiB over the serving benchmark).
  Padding query batches to a few bucketed lengths would bound the shapes too, but it costs compute:
  +52% per batch of 16 Debian synopses (11 tokens median) padded to a multiple of 16, +20% to 8.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
