"""ICL-vs-GD metrics on recorded states and next-token distributions (Dai et al. 2023, arXiv 2212.10559;
Deutch et al. 2024, arXiv 2311.07772; Shen et al. 2024, arXiv 2310.08540).

State metrics take per-layer tensors of one example and return one value per layer: attention outputs are
(layers, hidden), attention maps (layers, heads, keys). A cosine with a zero vector counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis, in float64; 0 where either vector is zero."""
    a, b = a.double(), b.double()
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dot))


def _unit(h: torch.Tensor) -> torch.Tensor:
    return F.normalize(h.double(), dim=-1)


def update(h: torch.Tensor, h_zs: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """The change of a state from zero-shot: h − h_ZS, or h/‖h‖ − h_ZS/‖h_ZS‖ (Dai's normalised variant)."""
    return _unit(h) - _unit(h_zs) if normalize else h.double() - h_zs.double()


def simaou(h_icl: torch.Tensor, h_ft: torch.Tensor, h_zs: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """SimAOU per layer: cos(h_ICL − h_ZS, h_FT − h_ZS); `normalize` gives SimAOU_norm (Dai et al.)."""
    return cosine(update(h_icl, h_zs, normalize), update(h_ft, h_zs, normalize))


def random_simaou(h_icl: torch.Tensor, h_zs: torch.Tensor, generator: torch.Generator,
                  normalize: bool = False) -> torch.Tensor:
    """Random-update baseline per layer: cos(ICL update, u) with u ~ U[0, 1)^d, as in Dai et al.'s code."""
    noise = torch.rand(h_icl.shape, generator=generator, dtype=torch.float64)
    return cosine(update(h_icl, h_zs, normalize), noise)


def simam(m_a: torch.Tensor, m_b: torch.Tensor) -> torch.Tensor:
    """SimAM per layer: cosine of two attention-score maps over the keys, averaged over heads."""
    return cosine(m_a, m_b).mean(-1)


def simam_delta(m_a: torch.Tensor, m_b: torch.Tensor, m_zs: torch.Tensor) -> torch.Tensor:
    """SimAM_Δ per layer: SimAM of the map updates m_a − m_ZS and m_b − m_ZS (Deutch et al.).

    With m_a = LCGD and m_b = GD maps this is α, the similarity of the two rules' updates.
    """
    return simam(m_a.double() - m_zs.double(), m_b.double() - m_zs.double())


def rec2ftp(zs_correct: Sequence[bool], ft_correct: Sequence[bool], icl_correct: Sequence[bool]) -> float:
    """Recall to fine-tuning predictions, in %: of the examples FT fixes (ZS wrong, FT right), the share ICL fixes.

    NaN when FT fixes none.
    """
    fixed = [icl for zs, ft, icl in zip(zs_correct, ft_correct, icl_correct) if not zs and ft]
    return 100.0 * sum(fixed) / len(fixed) if fixed else math.nan


def top_k(p: torch.Tensor, k: int) -> set[int]:
    """Ids of the k most probable tokens."""
    return set(torch.topk(p, k).indices.tolist())


def top_k_overlap(p: torch.Tensor, q: torch.Tensor, k: int) -> float:
    """Token overlap (Shen et al.): |T_K(p) ∩ T_K(q)| / K."""
    return len(top_k(p, k) & top_k(q, k)) / k


def overlap_cosine(p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[float, int]:
    """Overlap cosine (Shen et al., best reading): cosine of p and q restricted to O = T_K(p) ∩ T_K(q); and |O|.

    0 when the top-K sets do not overlap.
    """
    shared = sorted(top_k(p, k) & top_k(q, k))
    if not shared:
        return 0.0, 0
    index = torch.tensor(shared)
    return float(cosine(p[index], q[index])), len(shared)


def order_sensitivity(probs: torch.Tensor) -> float:
    """Sen: per-vocabulary-entry standard deviation across P orderings (population std), summed over the vocabulary.

    `probs` is (P, vocab), one next-token distribution per ordering of the demonstrations.
    """
    if probs.shape[0] < 2:
        raise ValueError("order sensitivity needs at least two orderings")
    return float(probs.double().std(dim=0, correction=0).sum())


def option_prediction(logits: torch.Tensor, option_ids: Sequence[int]) -> int:
    """Index of the most probable option, each option scored by its first token (ties: the first)."""
    return int(torch.argmax(logits[torch.tensor(list(option_ids))]))
