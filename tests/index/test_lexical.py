"""Lexical fusion (strop.index.lexical): identifier tokens, BM25 over a candidate set, the fused score."""

from __future__ import annotations

import numpy as np
import pytest

from strop.index.lexical import bm25, fuse, tokens


def test_tokens_split_identifiers() -> None:
    assert tokens("readLine read_line HTTPServer utf8 x") == ["read", "line", "read", "line", "http", "server", "utf8"]
    assert tokens("Größe der Datei") == ["größe", "der", "datei"]
    assert tokens("") == [] and tokens("_ - ! a") == []


def test_bm25_prefers_rare_terms_and_fuse_adds_scaled_part() -> None:
    texts = ["read the file", "read the socket", "read the file header", "nothing here"]
    s = bm25("read header", texts)
    assert s[2] == s.max() and s[3] == 0.0
    assert s[0] == pytest.approx(s[1])  # "read" alone: same term frequency and length
    dense = np.array([0.9, 0.8, 0.5, 0.95], np.float32)
    fused, lex = fuse("read header", texts, dense, 0.1)
    assert lex.max() == pytest.approx(1.0) and lex[3] == 0.0
    np.testing.assert_allclose(fused, dense + 0.1 * lex, rtol=1e-6)
    fused0, _ = fuse("read header", texts, dense, 0.0)
    np.testing.assert_allclose(fused0, dense)
    assert bm25("", texts).tolist() == [0.0] * 4 and len(bm25("read", [])) == 0
