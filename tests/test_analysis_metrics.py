"""Every analysis metric against values computed by hand on small tensors, and Deutch et al.'s noise example."""

import math

import pytest
import torch

from promptstep.analysis.metrics import (
    cosine,
    option_prediction,
    order_sensitivity,
    overlap_cosine,
    random_simaou,
    rec2ftp,
    simam,
    simam_delta,
    simaou,
    top_k_overlap,
)


def test_cosine_and_zero_vectors():
    assert float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(1 / math.sqrt(2))
    assert float(cosine(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))) == 0.0


def test_simaou_raw_and_normalised_per_layer():
    zs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    icl = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    ft = torch.tensor([[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]])
    # layer 0: updates (1, 1, 0) and (0, 1, 1) -> 1/2; layer 1: (0, 2, 0) and (0, -2, 0) -> -1
    assert simaou(icl, ft, zs).tolist() == pytest.approx([0.5, -1.0])
    # normalised, layer 0: (2, 1, 0)/√5 − (1, 0, 0) and (1, 1, 1)/√3 − (1, 0, 0)
    a = [2 / math.sqrt(5) - 1, 1 / math.sqrt(5), 0.0]
    b = [1 / math.sqrt(3) - 1, 1 / math.sqrt(3), 1 / math.sqrt(3)]
    expected = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    # layer 1: (0, 1, 0) − (0, 1, 0) = 0 for ICL -> cosine with a zero update counts as 0
    assert simaou(icl, ft, zs, normalize=True).tolist() == pytest.approx([expected, 0.0])


def test_noise_scores_a_quarter_on_simaou_norm_exact():
    """Deutch et al. §3.1: z_ICL = z + r, z_FT = z + r', r ⟂ r' ⟂ z, ‖r‖² = ‖r'‖² = 3‖z‖² -> 0.25 (raw: 0)."""
    z = torch.tensor([[2.0, 0.0, 0.0]])
    r = torch.tensor([[0.0, 2 * math.sqrt(3), 0.0]])
    r2 = torch.tensor([[0.0, 0.0, 2 * math.sqrt(3)]])
    assert simaou(z + r, z + r2, z, normalize=True).item() == pytest.approx(0.25)
    assert simaou(z + r, z + r2, z).item() == pytest.approx(0.0, abs=1e-12)


def test_noise_scores_a_quarter_on_simaou_norm_random_gaussian():
    """The same with Gaussian noise in 20,000 dimensions (nearly orthogonal): ≈ 0.25 and ≈ 0."""
    gen = torch.Generator().manual_seed(0)
    d = 20_000
    z, r, r2 = (torch.randn(1, d, generator=gen, dtype=torch.float64) for _ in range(3))
    r = r * math.sqrt(3) * z.norm() / r.norm()
    r2 = r2 * math.sqrt(3) * z.norm() / r2.norm()
    assert simaou(z + r, z + r2, z, normalize=True).item() == pytest.approx(0.25, abs=0.02)
    assert simaou(z + r, z + r2, z).item() == pytest.approx(0.0, abs=0.02)


def test_random_update_baseline_is_cosine_with_uniform_noise():
    zs = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    icl = torch.tensor([[2.0, 2.0, 1.0, 4.0]])
    value = random_simaou(icl, zs, torch.Generator().manual_seed(3)).item()
    u = torch.rand((1, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0].tolist()
    delta = [1.0, 0.0, -2.0, 0.0]
    expected = sum(a * b for a, b in zip(delta, u)) / (math.sqrt(5) * math.sqrt(sum(b * b for b in u)))
    assert value == pytest.approx(expected)


def test_simam_averages_head_cosines():
    m_a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # 1 layer, 2 heads, 2 keys
    m_b = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert simam(m_a, m_b).tolist() == pytest.approx([0.5])  # heads: 0 and 1


def test_simam_delta_and_alpha_compare_updates_not_maps():
    zs = torch.tensor([[[5.0, 5.0], [1.0, 1.0]]])
    a = zs + torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    b = zs + torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert simam_delta(a, b, zs).tolist() == pytest.approx([0.5])
    # the raw maps are dominated by the shared zero-shot map: head 0 cos((6,5),(5,6)) = 60/61
    assert simam(a, b).tolist() == pytest.approx([(60 / 61 + 1.0) / 2])


def test_rec2ftp():
    zs, ft, icl = [False, False, False, True], [True, True, False, True], [True, False, True, False]
    assert rec2ftp(zs, ft, icl) == pytest.approx(50.0)  # FT fixes examples 0 and 1; ICL fixes 0 of them
    assert math.isnan(rec2ftp([True], [True], [True]))


def test_top_k_overlap_and_overlap_cosine():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert top_k_overlap(p, q, 2) == 0.0
    assert top_k_overlap(p, q, 3) == pytest.approx(2 / 3)  # {0,1,2} ∩ {1,2,3}
    value, size = overlap_cosine(p, q, 3)  # on {1, 2}: (0.3·0.2 + 0.2·0.3) / (0.3² + 0.2²)
    assert size == 2 and value == pytest.approx(0.12 / 0.13)
    assert overlap_cosine(p, q, 2) == (0.0, 0)
    assert overlap_cosine(p, p, 4) == (pytest.approx(1.0), 4)


def test_order_sensitivity_sums_population_std_over_the_vocabulary():
    assert order_sensitivity(torch.tensor([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(0.5)
    assert order_sensitivity(torch.eye(3)) == pytest.approx(math.sqrt(2))  # 3 x std of (1,0,0) = √2/3
    assert order_sensitivity(torch.tensor([[0.2, 0.8]] * 4)) == 0.0
    with pytest.raises(ValueError):
        order_sensitivity(torch.tensor([[1.0, 0.0]]))


def test_option_prediction_scores_first_tokens():
    logits = torch.tensor([0.0, 5.0, 3.0, 9.0])
    assert option_prediction(logits, (2, 1)) == 1
    assert option_prediction(logits, (3, 1)) == 0
