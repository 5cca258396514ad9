import dataclasses
import re
import typing

import pytest
import yaml

from training import params


def test_missing_key_is_named_with_the_fix(tmp_path):
    raw = yaml.safe_load(params.PROJECT_PARAMS.read_text())
    del raw["train"]["momentum"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(params.ParamsError) as refused:
        params.load("data", path)
    assert str(refused.value) == "params: missing key train.momentum; add it to params.yaml"


def test_optional_inputs_may_be_left_out(tmp_path):
    raw = yaml.safe_load(params.PROJECT_PARAMS.read_text())
    del raw["data"]["root"], raw["model"]["pretrained"], raw["split"]["given_labeled"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert params.load("data", path).root is None and params.load("model", path).pretrained is None


def test_unknown_key_is_named(params_file):
    with pytest.raises(params.ParamsError, match=r"data\.synthetic\.hieght"):
        params.load("data", params_file(data={"synthetic": {"hieght": 3}}))


def test_unknown_section_is_named(params_file):
    with pytest.raises(params.ParamsError, match="tarin"):
        params.load("data", params_file(tarin={"iters": 3}))


def test_wrong_type_is_named(params_file):
    with pytest.raises(params.ParamsError, match=r"split\.labeled_ratio must be int"):
        params.load("split", params_file(split={"labeled_ratio": "eight"}))


@pytest.mark.parametrize("text, number", [("1e-3", 1e-3), ("5E4", 5e4), ("2.5e3", 2500.0), ("4e-05", 4e-5)])
def test_exponent_that_yaml_1_1_reads_as_text_is_the_number_dvc_reads(tmp_path, text, number):
    """PyYAML leaves 1e-3 as a string; DVC (YAML 1.2) reads a number and `dvc exp run -S` writes
    floats below 1e-4 so (4e-05), so the loader reads the number too."""
    path = tmp_path / "params.yaml"
    path.write_text(params.PROJECT_PARAMS.read_text().replace("  lr: 0.01", f"  lr: {text}", 1))
    assert params.load("train", path).lr == number


def test_error_in_other_section_fails_any_stage(params_file):
    with pytest.raises(params.ParamsError, match=r"train\.iters"):
        params.load("data", params_file(train={"iters": 1.5}))


def test_choice_and_int_to_float(params_file):
    with pytest.raises(params.ParamsError, match="data.dataset must be one of"):
        params.load("data", params_file(data={"dataset": "kitti"}))
    assert params.load("train", params_file(train={"lr": 1})).lr == 1.0


@pytest.mark.parametrize("key, value", [("mean", [0.5, 0.5]), ("std", [0.2, 0.0, 0.2])])
def test_normalisation_is_three_numbers_and_a_positive_std(params_file, key, value):
    with pytest.raises(params.ParamsError, match=rf"data\.{key}"):
        params.load("data", params_file(data={key: value}))


def test_project_params_file_is_valid():
    for section in ("data", "split"):
        params.load(section)


def _schema_keys(cls, prefix: str) -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[field.name]
        nested = dataclasses.is_dataclass(tp)
        keys |= _schema_keys(tp, f"{prefix}.{field.name}") if nested else {f"{prefix}.{field.name}"}
    return keys


def _file_keys(raw: dict, prefix: str, schema: set[str]) -> set[str]:
    keys = set()
    for key, value in raw.items():
        path = f"{prefix}.{key}"
        # a mapping of the schema's own (not a free-form dict such as ssl_benchmark.train) is walked into
        keys |= _file_keys(value, path, schema) if isinstance(value, dict) and path not in schema else {path}
    return keys


def test_schema_and_project_params_name_the_same_keys():
    raw = yaml.safe_load(params.PROJECT_PARAMS.read_text())
    schema = set().union(*(_schema_keys(cls, name) for name, cls in params._SECTIONS.items()))
    in_file = set().union(*(_file_keys(raw[name], name, schema) for name in raw))
    assert sorted(schema - in_file) == [] and sorted(in_file - schema) == []


def test_section_lays_overrides_over_the_project_file():
    cfg = params.section("train", iters=3, stpg=dict(memory_start_epoch=0))
    project = params.load("train", params.PROJECT_PARAMS)
    assert (cfg.iters, cfg.stpg.memory_start_epoch) == (3, 0)
    assert cfg.stpg.contrast_start_epoch == project.stpg.contrast_start_epoch and cfg.lr == project.lr
    with pytest.raises(params.ParamsError, match=r"train\.stpg\.memroy_size"):
        params.section("train", stpg=dict(memroy_size=3))


def test_backbone_names_match_the_model_factory():
    from training.models import BACKBONES

    assert set(params.BACKBONE_NAMES) == set(BACKBONES)


def test_method_names_match_the_method_registry():
    from training.methods import CLASSES, method_class

    assert set(params.METHOD_NAMES) == set(CLASSES)
    for name in CLASSES:
        assert method_class(name).__module__ == f"training.methods.{name}"
    with pytest.raises(ValueError, match="unknown method 'stgp'; use one of supervised, mean_teacher"):
        method_class("stgp")


@pytest.mark.parametrize("text, message", [
    ("iters: 0", "params: train.iters must be >= 1, got 0"),
    ("iters: -5", "params: train.iters must be >= 1, got -5"),
    ("batch_size: 0", "params: train.batch_size must be >= 1, got 0"),
    ("checkpoint_every: 0", "params: train.checkpoint_every must be >= 1, got 0"),
    ("lr: 0", "params: train.lr must be > 0, got 0.0"),
    ("ema_decay: 1.0", "params: train.ema_decay must be in [0, 1), got 1.0"),
    ("crop: [0, 64]", "params: train.crop[0] must be >= 1, got 0"),
])
def test_counts_and_rates_out_of_range_are_refused_at_load(params_file, text, message):
    with pytest.raises(params.ParamsError) as refused:
        params.load("train", params_file(train=yaml.safe_load(text)))
    assert str(refused.value) == message


@pytest.mark.parametrize("text", ["iters: 1", "batch_size: 1", "checkpoint_every: 1", "lr: 1.0e-9",
                                  "ema_decay: 0.0", "ema_decay: 0.999", "crop: [1, 64]"])
def test_range_edges_inside_are_accepted(params_file, text):
    key, value = text.split(": ")
    cfg = params.load("train", params_file(train=yaml.safe_load(text)))
    assert getattr(cfg, key) == yaml.safe_load(value)


def test_a_soak_shorter_than_one_window_is_refused(params_file):
    with pytest.raises(params.ParamsError, match=r"benchmark\.soak_frames \(999\) must be at least one benchmark\.soak_window \(1000\)"):
        params.load("benchmark", params_file(benchmark={"soak_frames": 999, "soak_window": 1000}))
    assert params.load("benchmark", params_file(benchmark={"soak_frames": 1000, "soak_window": 1000})).soak_frames == 1000
