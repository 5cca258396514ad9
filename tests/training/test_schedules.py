"""Schedules and iteration counts: docs/methods/stpg.md §2, §7 and T12."""
import pytest

from training.schedules import epoch_of, iters_per_epoch, poly_lr, sigmoid_rampup, split_sizes


def test_poly_lr_t12():
    # 0.01 * (1 - 500/1000)^0.9 = 0.01 * 0.5^0.9 = 0.00535887
    assert poly_lr(0.01, 500, 1000) == pytest.approx(0.00535887, abs=1e-8)


def test_poly_lr_ends():
    assert poly_lr(0.01, 0, 1000) == pytest.approx(0.01)
    assert poly_lr(0.01, 1000, 1000) == 0.0
    assert poly_lr(0.01, 1200, 1000) == 0.0  # held at 0 past the end
    # CSS floors the rate: 6.4e-3 * 0.5^0.9 = 0.00342968 above the floor, 1e-4 at the end.
    assert poly_lr(6.4e-3, 500, 1000, min_lr=1e-4) == pytest.approx(0.00342967508, abs=1e-10)
    assert poly_lr(6.4e-3, 1000, 1000, min_lr=1e-4) == 1e-4


@pytest.mark.parametrize("ratio, labeled, unlabeled, iters", [
    (16, 185, 2790, 930),   # 2790 // 3
    (8, 371, 2604, 868),    # 2604 // 3
    (4, 743, 2232, 744),    # 2232 // 3
    (2, 1487, 1488, 496),   # 1488 // 3
])
def test_cityscapes_splits(ratio, labeled, unlabeled, iters):
    assert split_sizes(2975, ratio) == (labeled, unlabeled)
    assert iters_per_epoch(labeled, unlabeled, 3) == iters


@pytest.mark.parametrize("labeled, iters", [
    (183, 1299),   # 1464 // 8;  (10582 - 183) // 8 = 10399 // 8
    (366, 1277),   # 1464 // 4;  10216 // 8
    (732, 1231),   # 1464 // 2;  9850 // 8
    (1464, 1139),  # full;       9118 // 8
])
def test_voc_classic_iters(labeled, iters):
    assert iters_per_epoch(labeled, 10582 - labeled, 8) == iters


def test_longer_list_sets_the_epoch():
    assert iters_per_epoch(10, 3, 3) == 3


def test_city_eighth_switch_iterations():
    # 868 iterations per epoch: the memory bank starts with epoch 6 at iteration 6*868 = 5208,
    # the contrastive loss with epoch 11 at 11*868 = 9548.
    per_epoch = iters_per_epoch(*split_sizes(2975, 8), 3)
    assert per_epoch == 868
    assert epoch_of(5207, per_epoch) == 5
    assert epoch_of(5208, per_epoch) == 6
    assert epoch_of(9547, per_epoch) == 10
    assert epoch_of(9548, per_epoch) == 11


def test_bad_arguments():
    with pytest.raises(ValueError, match="ratio"):
        split_sizes(2975, 0)
    with pytest.raises(ValueError, match="batch_size"):
        iters_per_epoch(10, 10, 0)
    with pytest.raises(ValueError, match="total_iters"):
        poly_lr(0.01, 0, 0)


def test_sigmoid_rampup_hand_values():
    # exp(-5 (1 - t/T)^2): t=0 -> exp(-5), t=T/2 -> exp(-1.25), t>=T -> 1
    assert sigmoid_rampup(0, 100) == pytest.approx(0.006737947, rel=1e-6)
    assert sigmoid_rampup(50, 100) == pytest.approx(0.286504797, rel=1e-6)
    assert sigmoid_rampup(90, 100) == pytest.approx(0.951229425, rel=1e-6)
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp: full weight from the first iteration
