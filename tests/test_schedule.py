"""The paper's lr schedule: constant for the first part, then linear decay, per iteration."""

import itertools

from p2p_dist.train.schedule import lr_factor, total_steps


def test_lr_is_constant_then_decays_linearly_like_the_reference():
    total = 200  # like 200 epochs with one step each: 100 constant, 100 decaying
    factors = [lr_factor(s, total, 0.5) for s in range(total)]
    assert factors[:100] == [1.0] * 100
    # the reference: 1 - max(0, epoch + 1 - 100) / 101
    assert all(abs(factors[s] - (1 - (s + 1 - 100) / 101)) < 1e-12 for s in range(100, total))
    assert all(a > b for a, b in itertools.pairwise(factors[100:]))
    assert 0 < factors[-1] < 0.01


def test_total_steps_come_from_steps_or_epochs():
    assert total_steps(steps=50, epochs=0, batches_per_epoch=10, grad_accum=1) == 50
    assert total_steps(steps=0, epochs=2.5, batches_per_epoch=10, grad_accum=1) == 25


def test_epochs_with_gradient_accumulation_cover_all_the_configured_data():
    # 75 micro-batches per epoch, 4 per step: 10 epochs are 187.5 steps, not 10 * (75 // 4) = 180.
    assert total_steps(steps=0, epochs=10, batches_per_epoch=75, grad_accum=4) == 188
