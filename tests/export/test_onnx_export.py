"""ONNX / TorchScript export of a small DeepLabV3+ (resnet18, 64x128, 5 classes) through every output kind."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export import run as export_run
from export.onnx_export import (MIN_OPSET, DeployWrapper, ExportError, example_input, export_onnx,
                                export_torchscript, make_contract, read_contract)
from runtime.engines import open_engine
from training.models import build_model
from tests.conftest import params_copy
from tests.export.fixtures import SIZE, model_info


INFO = model_info("ab")




@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 5).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """{(layout, kind): (path, contract)} for the float layout in every kind plus raw bytes."""
    out = tmp_path_factory.mktemp("onnx")
    cases = [("nchw_float", "logits"), ("nchw_float", "lowres_logits"), ("nchw_float", "labels"),
             ("nhwc_uint8", "lowres_logits")]
    result = {}
    for layout, kind in cases:
        contract = make_contract(INFO, input_size=SIZE, input_layout=layout, output_kind=kind)
        path = export_onnx(model, contract, out / f"{layout}_{kind}.onnx", dynamic_batch=True)
        result[layout, kind] = (path, contract)
    return result


def smooth_images(count: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) images with large smooth blobs, like scenes rather than noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (count, 3, 4, 8)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bicubic", align_corners=False)
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def normalise(images: np.ndarray) -> np.ndarray:
    mean, std = np.array(INFO["mean"], np.float32), np.array(INFO["std"], np.float32)
    return np.ascontiguousarray(((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))


def test_contract_from_deployable_info():
    contract = make_contract(INFO, input_size=[64, 128], input_layout="nhwc_uint8", output_kind="labels")
    assert contract.classes == tuple(INFO["classes"])
    assert contract.palette[1] == (0, 0, 142)
    assert contract.input_size == (64, 128)
    assert contract.precision == "fp32"
    assert contract.checkpoint_sha256 == INFO["sha256"]
    assert contract.project_version  # installed version or the fallback


@pytest.mark.parametrize("kind", ["logits", "lowres_logits"])
def test_fp32_logits_match_torch(model, exported, kind):
    path, contract = exported["nchw_float", kind]
    x = normalise(smooth_images(2))
    with torch.no_grad():
        expected = (model(torch.from_numpy(x)) if kind == "logits" else model.forward_lowres(torch.from_numpy(x))).numpy()
    with open_engine(path) as engine:
        got = engine.infer(x)
    assert got.dtype == np.float32
    assert got.shape == ((2, 5, 64, 128) if kind == "logits" else (2, 5, 16, 32))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)  # float32, other summation order


def test_in_graph_argmax_gives_uint8_labels(model, exported):
    path, _ = exported["nchw_float", "labels"]
    x = normalise(smooth_images(2))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1).numpy()
    with open_engine(path) as engine:
        got = engine.infer(x)
    assert got.dtype == np.uint8 and got.shape == (2, 64, 128)
    assert np.mean(got == expected) > 0.999  # only float near-ties may flip


def test_contract_metadata_round_trips(exported):
    for path, contract in exported.values():
        assert read_contract(path) == contract
        with open_engine(path) as engine:
            assert engine.contract == contract
        props = {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert set(contract.to_metadata()) <= props


def test_raw_byte_input_matches_normalised_float_input(exported):
    images = smooth_images(2, seed=3)
    float_path, _ = exported["nchw_float", "lowres_logits"]
    bytes_path, bytes_contract = exported["nhwc_uint8", "lowres_logits"]
    with open_engine(float_path) as engine:
        from_float = engine.infer(normalise(images))
    with open_engine(bytes_path) as engine:
        assert engine.session.get_inputs()[0].type == "tensor(uint8)"
        from_bytes = engine.infer(images)
    np.testing.assert_allclose(from_bytes, from_float, atol=1e-4, rtol=1e-5)


def test_opset_below_17_is_refused(model, tmp_path):
    contract = make_contract(INFO, input_size=SIZE, input_layout="nchw_float", output_kind="logits")
    with pytest.raises(ExportError, match=r"opset 13 is not supported.*17"):
        export_onnx(model, contract, tmp_path / "m.onnx", opset=13)
    assert not list(tmp_path.iterdir())
    assert MIN_OPSET == 17


def test_torchscript_artefact_carries_contract_and_matches(model, tmp_path):
    contract = make_contract(INFO, input_size=SIZE, input_layout="nhwc_uint8", output_kind="lowres_logits")
    path = export_torchscript(model, contract, tmp_path / "m.ts")
    images = smooth_images(1)
    with torch.no_grad():
        expected = DeployWrapper.for_contract(model, contract)(torch.from_numpy(images)).numpy()
    with open_engine(path) as engine:
        assert engine.contract == contract
        # float32 logits from another summation order / thread count: a few ulps of their magnitude
        np.testing.assert_allclose(engine.infer(images), expected, atol=1e-5, rtol=1e-5)


def test_torchscript_on_a_full_disk_names_the_artefact_and_leaves_nothing(model, tmp_path, monkeypatch):
    """The write of the serialised module fails as a file object on a full disk does (no file name)."""
    import errno
    import os
    from pathlib import Path

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    contract = make_contract(INFO, input_size=SIZE, input_layout="nhwc_uint8", output_kind="lowres_logits")
    with pytest.raises(OSError) as raised:
        export_torchscript(model, contract, tmp_path / "m.ts")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path / "m.ts"))
    assert list(tmp_path.iterdir()) == []


def test_example_input_follows_layout():
    contract = make_contract(INFO, input_size=SIZE, input_layout="nhwc_uint8", output_kind="labels")
    x = example_input(contract, batch=2)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (2, 64, 128, 3)


def _stage_params(tmp_path, **export):
    return params_copy(tmp_path / "params.yaml", export={"out_dir": str(tmp_path / "out"), **export})


def test_cli_missing_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    params = _stage_params(tmp_path, checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(SystemExit) as exit_info:
        export_run.entry(["--params", str(params), "--metrics", str(tmp_path / "m.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err and "not found" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_cli_unsupported_opset_exits_2_with_one_line(tmp_path, capsys):
    params = _stage_params(tmp_path, opset=13)
    with pytest.raises(SystemExit) as exit_info:
        export_run.entry(["--params", str(params), "--metrics", str(tmp_path / "m.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "export.opset" in err and "13" in err
