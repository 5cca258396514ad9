"""The semi-supervised benchmark's bookkeeping: row summary, gate and recovered gap (hand-computed)."""
import dataclasses

import pytest

from training import params, ssl_summary
from training.ssl_summary import summarise


def row(arm, seed, miou):
    return {"arm": arm, "method": "supervised" if arm == "full" else arm, "seed": seed, "miou": miou}


def test_gate_and_recovered_gap_hand_values():
    rows = [row("full", 1, 0.30), row("full", 2, 0.32),  # mean 0.31, spread 0.02
            row("supervised", 1, 0.20), row("supervised", 2, 0.21),  # mean 0.205, spread 0.01
            row("stpg", 1, 0.25), row("stpg", 2, 0.27)]  # mean 0.26
    summary = summarise(rows, ["full", "supervised", "stpg"], [1, 2])
    gate = summary["gate"]
    assert gate["full_miou"] == pytest.approx(0.31) and gate["sup_miou"] == pytest.approx(0.205)
    assert gate["headroom"] == pytest.approx(0.105) and gate["seed_spread"] == pytest.approx(0.02)
    assert gate["passed"]  # 10.5 points >= 5 and >= 3 x 2 points
    # (0.26 - 0.205) / 0.105 = 0.5238
    assert summary["recovered"] == {"stpg": pytest.approx(0.5238, abs=1e-4)}
    assert summary["arms"]["stpg"] == {"mean": pytest.approx(0.26), "spread": pytest.approx(0.02), "seeds": 2}
    assert summary["missing"] == []
    # each seed against supervised training of the same seed: 0.25 - 0.20, 0.27 - 0.21
    assert summary["paired_gain"]["stpg"] == {"1": pytest.approx(0.05), "2": pytest.approx(0.06)}
    assert summary["paired_gain"]["full"] == {"1": pytest.approx(0.10), "2": pytest.approx(0.11)}


def test_paired_gain_needs_the_same_seed_of_supervised_training():
    rows = [row("supervised", 1, 0.20), row("stpg", 1, 0.24), row("stpg", 2, 0.30), row("css", 2, 0.22)]
    gains = summarise(rows, ["supervised", "stpg", "css"], [1, 2])["paired_gain"]
    assert gains == {"stpg": {"1": pytest.approx(0.04)}}


def test_an_arm_with_one_seed_recovers_its_paired_gain_not_its_gain_over_the_two_seed_mean():
    rows = [row("full", 1, 0.30), row("full", 2, 0.32), row("supervised", 1, 0.20), row("supervised", 2, 0.21),
            row("stpg", 1, 0.25)]
    # headroom 0.105; paired gain 0.25 - 0.20 = 0.05 -> 0.4762 (against the mean 0.205 it would read 0.4286)
    assert summarise(rows, ["full", "supervised", "stpg"], [1, 2])["recovered"] == {"stpg": pytest.approx(0.4762, abs=1e-4)}


def test_gate_fails_on_spread_and_missing_rows_are_listed():
    rows = [row("full", 1, 0.30), row("full", 2, 0.40), row("supervised", 1, 0.20), row("supervised", 2, 0.22)]
    summary = summarise(rows, ["full", "supervised", "stpg"], [1, 2])
    # headroom 0.14 >= 0.05 but < 3 x 0.10
    assert summary["gate"]["headroom"] == pytest.approx(0.14) and not summary["gate"]["passed"]
    assert summary["missing"] == ["stpg-1", "stpg-2"]
    assert "stpg" not in summary["recovered"]


def test_gate_is_undecided_until_both_arms_have_every_seed():
    rows = [row("full", 1, 0.30), row("supervised", 1, 0.20), row("supervised", 2, 0.21)]
    gate = summarise(rows, ["full", "supervised"], [1, 2])["gate"]
    assert gate["headroom"] == pytest.approx(0.095) and gate["passed"] is None


def test_rows_train_what_params_say(tmp_path):
    raw = params.load_raw()
    ssl = params.load("ssl_benchmark")
    full = params.ssl_train_params(raw, "full", ssl.seeds[0])
    stpg = params.ssl_train_params(raw, "stpg", ssl.seeds[1])
    assert full.method == "supervised" and stpg.method == "stpg" and stpg.seed == ssl.seeds[1]
    assert params.ssl_train_params(raw, "lpl_stage2", 1).method == "supervised"  # the retrain on pseudo masks
    for key, value in ssl.train.items():
        if not isinstance(value, dict):
            assert getattr(stpg, key) == value, key
    # The STPG switches sit where the official recipe puts them in its own run: about 4 % and 8 %.
    n_labeled = ssl.data.num_train // ssl.labeled_ratio
    per_epoch = (ssl.data.num_train - n_labeled) // stpg.batch_size
    assert stpg.stpg.memory_start_epoch * per_epoch / stpg.iters == pytest.approx(0.04, abs=0.015)
    assert stpg.stpg.contrast_start_epoch * per_epoch / stpg.iters == pytest.approx(0.08, abs=0.015)


def test_a_precision_suffix_changes_the_precision_alone():
    raw = params.load_raw()
    assert params.split_arm("stpg_fp32") == ("stpg", "fp32")
    assert params.split_arm("mean_teacher") == ("mean_teacher", None)  # "teacher" is no precision
    assert params.split_arm("mean_teacher_bf16") == ("mean_teacher", "bf16")
    plain, fp32 = params.ssl_train_params(raw, "stpg", 2), params.ssl_train_params(raw, "stpg_fp32", 2)
    assert fp32.precision == "fp32" and dataclasses.replace(fp32, precision=plain.precision) == plain
    assert params.ssl_train_params(raw, "full_fp32", 1).method == "supervised"
    with pytest.raises(params.ParamsError, match="stpg_fp64"):  # not a precision: read as a method, refused
        params.ssl_train_params(raw, "stpg_fp64", 1)


def test_unknown_override_is_refused_with_its_key(params_file):
    path = params_file(ssl_benchmark={"train": {"itres": 10}})
    with pytest.raises(params.ParamsError, match=r"unknown key ssl_benchmark.train \(arm full\).itres"):
        params.load("train", path)


def test_one_reader_takes_the_row_files_in_name_order():
    names = ["stpg-1.json", "summary.json", "full-2.json", "notes.txt", "full-1.json"]
    assert ssl_summary.read_rows(names, lambda name: {"file": name}) == [
        {"file": "full-1.json"}, {"file": "full-2.json"}, {"file": "stpg-1.json"}]
