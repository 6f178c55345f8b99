"""Teacher-assisted training pieces: distillation losses and hard-negative mixing.

* MarginMSE: the student's margin between the positive and each negative matches the
  teacher's margin, both in logit units: student cosines are divided by the InfoNCE temperature,
  and so are a bi-encoder teacher's (``fine_tune(teacher_kind=...)``; a cross-encoder's scores
  already are logits). Without that, a bi-encoder teacher's cosine margins (~0.1) asked the
  student for margins 20x smaller than its own and wrecked it (docs/benchmarks.md).
* CPRD (contrastive partial ranking distillation): only the teacher's *order among the hard
  negatives* is distilled, as a listwise KL between the teacher's and the student's softmax
  over the negatives; the positive is left to InfoNCE, so the two scores' different
  distributions never have to agree in absolute terms.
* Listwise (``distill.loss: "listwise"``): the same KL over each query's whole batch row, the
  positive and every in-batch document included (``strop.trainer.train._distill_listwise``).
* MoCHi: synthetic negatives mixed in feature space from each query's hardest negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_mse(s_pos: torch.Tensor, s_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor,
               valid: torch.Tensor) -> torch.Tensor:
    """s_pos (B,), s_neg (B, N) student logits; t_* teacher scores; valid (B, N) marks real negatives."""
    diff = (s_pos[:, None] - s_neg) - (t_pos[:, None] - t_neg)
    diff = diff[valid]
    return (diff**2).mean() if diff.numel() else s_pos.sum() * 0.0


def listwise_kl(s: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, teacher_temperature: float = 1.0) -> torch.Tensor:
    """Mean over rows of KL(softmax(t / T) || softmax(s)), each row over its ``valid`` cells only
    (rows with < 2 valid cells are skipped; invalid cells may hold anything, NaN included)."""
    rows = valid.sum(dim=1) >= 2
    if not rows.any():
        return s.sum() * 0.0
    s = s[rows].masked_fill(~valid[rows], float("-inf"))
    t = (t[rows] / teacher_temperature).masked_fill(~valid[rows], float("-inf"))
    log_p_s = F.log_softmax(s, dim=1)
    p_t = F.softmax(t, dim=1)
    kl = p_t * (torch.log(p_t.clamp_min(1e-12)) - log_p_s)
    return kl.masked_fill(~valid[rows], 0.0).sum(dim=1).mean()


def cprd(s_neg: torch.Tensor, t_neg: torch.Tensor, valid: torch.Tensor, teacher_temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over each query's negatives only: the positive is left to InfoNCE."""
    return listwise_kl(s_neg, t_neg, valid, teacher_temperature)


def mix_negatives(q: torch.Tensor, d: torch.Tensor, false_neg: torch.Tensor, n_synth: int, hardest: int = 8,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """MoCHi: for each query, ``n_synth`` normalised convex mixes of pairs of its ``hardest`` negatives.

    Returns (B, n_synth, dim) detached synthetic negatives (gradients flow only through the query).
    """
    with torch.no_grad():
        qn, dn = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
        sims = qn @ dn.T
        b = q.shape[0]
        eye = torch.zeros_like(sims, dtype=torch.bool)
        eye[torch.arange(b), torch.arange(b)] = True  # the positives
        sims = sims.masked_fill(eye | false_neg, float("-inf"))
        k = min(hardest, max(1, d.shape[0] - 1))
        top = sims.topk(k, dim=1).indices  # (B, k)
        i = torch.randint(0, k, (b, n_synth), generator=generator)
        j = torch.randint(0, k, (b, n_synth), generator=generator)
        alpha = torch.rand((b, n_synth, 1), generator=generator)
        ni, nj = dn[top.gather(1, i)], dn[top.gather(1, j)]
        return F.normalize(alpha * ni + (1 - alpha) * nj, dim=-1)
