import pytest

from training import params


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_missing_keys(tmp_path):
    cfg = params.load("data", write(tmp_path, "data:\n  dataset: synthetic\n"))
    assert cfg.synthetic.height == 256 and cfg.root is None


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(params.ParamsError, match=r"data\.synthetic\.hieght"):
        params.load("data", write(tmp_path, "data:\n  synthetic:\n    hieght: 3\n"))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(params.ParamsError, match="tarin"):
        params.load("data", write(tmp_path, "tarin:\n  iters: 3\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(params.ParamsError, match=r"split\.labeled_ratio must be int"):
        params.load("split", write(tmp_path, "split:\n  labeled_ratio: eight\n"))


def test_error_in_other_section_fails_any_stage(tmp_path):
    with pytest.raises(params.ParamsError, match=r"train\.iters"):
        params.load("data", write(tmp_path, "train:\n  iters: 1.5\n"))


def test_choice_and_int_to_float(tmp_path):
    with pytest.raises(params.ParamsError, match="data.dataset must be one of"):
        params.load("data", write(tmp_path, "data:\n  dataset: kitti\n"))
    assert params.load("train", write(tmp_path, "train:\n  lr: 1\n")).lr == 1.0


def test_project_params_file_is_valid():
    for section in ("data", "split"):
        params.load(section)


def test_backbone_names_match_the_model_factory():
    from training.models import BACKBONES

    assert set(params.BACKBONE_NAMES) == set(BACKBONES)
