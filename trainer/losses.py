"""Contrastive losses over (query, document) embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, d: torch.Tensor, temperature: float, false_neg: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE where query i's positive is document i and every other document is a negative.

    ``d`` holds the batch's positives first (B rows) and then any mined negatives.
    ``false_neg`` (B x len(d), bool) masks documents known to be relevant to query
    i (same text or another positive of it), so they are not pushed away.
    """
    q = F.normalize(q, dim=-1)
    d = F.normalize(d, dim=-1)
    logits = q @ d.T / temperature
    if false_neg is not None:
        logits = logits.masked_fill(false_neg, float("-inf"))
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels)
