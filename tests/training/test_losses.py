"""Pixel losses: docs/methods/stpg.md §4, T2 and T10; docs/methods/css.md S2."""
import math

import pytest
import torch

from training.methods.losses import (CITYSCAPES_CLASS_WEIGHTS, ce, ohem_ce, ohem_keep_mask,
                                     weighted_ce)

# T1/T2: Gen-Teacher labels, Pro-Student predictions, teacher confidence and selection mask.
TEACHER = [0, 0, 0, 0, 1, 1, 2, 2]
STUDENT = [0, 0, 0, 1, 1, 2, 2, 0]
CONFIDENCE = [0.9, 0.9, 0.9, 0.6, 0.7, 0.5, 0.8, 0.6]
MASK = [1, 1, 1, 0, 1, 0, 1, 1]
# CE with logit 2 on the predicted class, 0 elsewhere (K=3): ln(e^2+2) - 2 if the label is the
# prediction, ln(e^2+2) otherwise.
CE_AGREE = 0.2395447662
CE_DISAGREE = 2.2395447662


def _t2_logits():
    logits = torch.zeros(1, 3, 1, 8, dtype=torch.float64)
    for pixel, cls in enumerate(STUDENT):
        logits[0, cls, 0, pixel] = 2.0
    return logits


def _row(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype).reshape(1, 1, -1)


def test_t2_professional_loss():
    # (0.9*3 + 0.7 + 0.8) * CE_AGREE + 0.6 * CE_DISAGREE over 8 pixels
    weight = _row(CONFIDENCE) * _row(MASK)
    loss = weighted_ce(_t2_logits(), _row(TEACHER, torch.long), weight)
    assert loss.item() == pytest.approx(0.293727, abs=1e-6)


def test_t2_general_loss_without_mask():
    # (0.9*3 + 0.7 + 0.8) * CE_AGREE + (0.6 + 0.5 + 0.6) * CE_DISAGREE over 8 pixels
    loss = weighted_ce(_t2_logits(), _row(TEACHER, torch.long), _row(CONFIDENCE))
    assert loss.item() == pytest.approx(0.601664, abs=1e-6)


def test_ignored_pixel_counts_in_denominator_only():
    target = _row(TEACHER, torch.long)
    target[0, 0, 3] = 255  # drops 0.6 * CE_DISAGREE from the sum
    numerator = 4.2 * CE_AGREE + 1.1 * CE_DISAGREE
    all_pixels = weighted_ce(_t2_logits(), target, _row(CONFIDENCE))
    assert all_pixels.item() == pytest.approx(numerator / 8, abs=1e-6)  # 0.433698
    valid = weighted_ce(_t2_logits(), target, _row(CONFIDENCE), reduction="valid_pixels")
    assert valid.item() == pytest.approx(numerator / 7, abs=1e-6)  # 0.495655


def test_per_image_weight_positive_only():
    # docs/methods/css.md S2: labels [0, 1, ign, 1], logits 0 (C=2, CE = ln 2), image weight 2/3; the mean is
    # over the 3 pixels with CE > 0: (2/3) ln 2 = 0.462098.
    logits = torch.zeros(1, 2, 1, 4)
    target = torch.tensor([[[0, 1, 255, 1]]])
    loss = weighted_ce(logits, target, torch.full((1, 1, 1), 2 / 3), reduction="positive_only")
    assert loss.item() == pytest.approx(0.462098, abs=1e-6)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        weighted_ce(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long), torch.ones(1, 1, 1),
                    reduction="mean")


def test_plain_ce_ignores():
    logits = torch.zeros(1, 2, 1, 4)
    target = torch.tensor([[[0, 1, 255, 1]]])
    assert ce(logits, target).item() == pytest.approx(math.log(2), abs=1e-6)  # 0.693147
    assert ce(logits, torch.full_like(target, 255)).item() == 0.0


# T10: true-class probabilities pi = [0.95, 0.5, 0.8, 0.6, 0.99] from two-class logits
# (ln pi, ln(1 - pi)) with target 0, so CE_p = -ln pi_p.
PI = [0.95, 0.5, 0.8, 0.6, 0.99]


def _ohem_inputs(extra_ignored=0):
    pi = torch.tensor(PI + [0.3] * extra_ignored, dtype=torch.float64)
    logits = torch.stack([pi.log(), (1 - pi).log()]).reshape(1, 2, 1, -1)
    target = torch.zeros(1, 1, pi.numel(), dtype=torch.long)
    target[..., len(PI):] = 255
    return logits, target


def test_t10_threshold_raised_to_the_kth_probability():
    # 3rd smallest pi is 0.8 > 0.7, so tau = 0.8: keep {0.5, 0.8, 0.6}
    logits, target = _ohem_inputs()
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=3)
    assert keep.flatten().tolist() == [False, True, True, True, False]
    # (ln 2 + ln 1.25 + ln(5/3)) / 3
    assert ohem_ce(logits, target, min_kept=3).item() == pytest.approx(0.475705, abs=1e-6)


def test_t10_threshold_stays_at_thresh():
    # 2nd smallest pi is 0.6 <= 0.7, so tau = 0.7: keep {0.5, 0.6}
    logits, target = _ohem_inputs()
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=2)
    assert keep.flatten().tolist() == [False, True, False, True, False]
    # (ln 2 + ln(5/3)) / 2
    assert ohem_ce(logits, target, min_kept=2).item() == pytest.approx(0.601986, abs=1e-6)


def test_no_mining_when_too_few_valid_pixels():
    # 5 valid pixels (plus 2 ignored) < min_kept = 6: every valid pixel counts,
    # -(ln .95 + ln .5 + ln .8 + ln .6 + ln .99) / 5 = 0.297692
    logits, target = _ohem_inputs(extra_ignored=2)
    keep = ohem_keep_mask(logits, target, thresh=0.7, min_kept=6)
    assert keep.flatten().tolist() == [True] * 5 + [False] * 2
    assert ohem_ce(logits, target, min_kept=6).item() == pytest.approx(0.297692, abs=1e-6)
    # Ignored pixels never count as kept or as valid: with min_kept = 3 the T10 result holds.
    assert ohem_keep_mask(logits, target, 0.7, 3).flatten().tolist() == [False, True, True, True, False, False, False]


def test_class_weighted_mean():
    # Pixel 1 (pi = 0.5) is class 1 with weight 2; min_kept = 2 keeps pixels 1 and 3:
    # (2 ln 2 + 1 ln(5/3)) / (2 + 1) = 0.632373
    logits, target = _ohem_inputs()
    logits[0, :, 0, 1] = torch.tensor([math.log(0.5), math.log(0.5)])
    target[0, 0, 1] = 1
    loss = ohem_ce(logits, target, min_kept=2, class_weights=torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.632373, abs=1e-6)


def test_ohem_nothing_valid_is_zero():
    logits, target = _ohem_inputs()
    assert ohem_ce(logits, torch.full_like(target, 255), min_kept=2).item() == 0.0


def test_cityscapes_class_weights():
    assert len(CITYSCAPES_CLASS_WEIGHTS) == 19
    assert CITYSCAPES_CLASS_WEIGHTS[0] == 0.8373  # road
    assert CITYSCAPES_CLASS_WEIGHTS[12] == 1.1116  # rider
    assert CITYSCAPES_CLASS_WEIGHTS[18] == 1.0507  # bicycle
