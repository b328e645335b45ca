"""The paired (McNemar) z: hand-computed cases, antisymmetry, zero for identical classifiers, pooling,
and clear errors."""
import math

import numpy as np
import pytest
import torch

from nblib.book.stats import discordant, paired_z, pooled_z, z_from_counts


def masks(a_only, b_only, both=0, neither=0):
    """Boolean 'wrong' arrays with the given numbers of examples only a / only b / both / neither gets wrong."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def test_hand_computed_cases():
    # n_a = 1, n_b = 9: z = 8 / √10
    a, b = masks(1, 9, both=5, neither=20)
    assert discordant(a, b) == (1, 9)
    assert paired_z(a, b) == pytest.approx(8 / math.sqrt(10), rel=1e-15)
    # n_a = 4, n_b = 0: z = −4 / 2 = −2
    assert paired_z(*masks(4, 0, both=3)) == -2.0
    # n_a = 3, n_b = 3: no difference
    assert paired_z(*masks(3, 3, neither=7)) == 0.0
    assert z_from_counts(0, 1) == 1.0


def test_antisymmetric_and_zero_when_identical():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.1, rng.random(500) < 0.15
    assert paired_z(a, b) == -paired_z(b, a)
    assert paired_z(a, a) == 0.0
    assert paired_z(np.zeros(10, bool), np.zeros(10, bool)) == 0.0


def test_examples_both_get_wrong_do_not_count():
    assert paired_z(*masks(2, 7)) == paired_z(*masks(2, 7, both=40, neither=3))


def test_tensors_are_accepted():
    a, b = masks(1, 9)
    assert paired_z(torch.from_numpy(a), torch.from_numpy(b)) == paired_z(a, b)


def test_pooled_sums_the_counts_before_dividing():
    p1, p2 = masks(1, 5), masks(3, 4, both=2)
    # Σ n_a = 4, Σ n_b = 9: z = 5 / √13, not the mean of the two z's
    assert pooled_z([p1, p2]) == pytest.approx(5 / math.sqrt(13), rel=1e-15)
    assert pooled_z([p1]) == paired_z(*p1)
    assert pooled_z([p1, p2]) == -pooled_z([(b, a) for a, b in (p1, p2)])


@pytest.mark.parametrize("bad", [
    lambda: paired_z(np.array([0, 1]), np.array([1, 0])),              # not boolean
    lambda: paired_z(np.zeros(3, bool), np.zeros(4, bool)),            # different examples
    lambda: paired_z(np.zeros((2, 2), bool), np.zeros((2, 2), bool)),  # not 1-D
    lambda: pooled_z([]),
    lambda: z_from_counts(-1, 2),
    lambda: z_from_counts(1.5, 2),
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()
