"""The model contract as stored in an artefact: every field read back with its type checked, and
the contract checked against the graph it travels with."""
from __future__ import annotations

import pytest

from runtime.contract import ContractError, ModelContract
from runtime.engines import EngineError, check_graph_shapes

CONTRACT = ModelContract(classes=("road", "car"), palette=((128, 64, 128), (0, 0, 142)), mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), input_size=(4, 6), input_layout="nchw_float",
                         output_kind="logits", dataset="synthetic")


def test_contract_round_trips_through_its_metadata():
    assert ModelContract.from_metadata(CONTRACT.to_metadata()) == CONTRACT


@pytest.mark.parametrize("field, stored, expected", [
    ("input_size", '"abc"', "[height, width] in whole pixels above 0"),
    ("input_size", "[4, 0]", "[height, width] in whole pixels above 0"),
    ("input_size", "[4.5, 6]", "[height, width] in whole pixels above 0"),
    ("input_size", "[4, 6, 3]", "[height, width] in whole pixels above 0"),
    ("classes", "[]", "a non-empty list of names"),
    ("classes", '["road", 7]', "a non-empty list of names"),
    ("palette", "[[128, 64, 256], [0, 0, 142]]", "a list of [r, g, b] colours in 0..255"),
    ("palette", '"red"', "a list of [r, g, b] colours in 0..255"),
    ("mean", "[0.5, 0.5]", "three numbers [r, g, b]"),
    ("mean", "[0.5, true, 0.5]", "three numbers [r, g, b]"),
    ("std", "[0.25, 0, 0.25]", "three positive numbers [r, g, b]"),
    ("input_layout", '"nchw"', "one of nchw_float, nhwc_uint8"),
    ("output_kind", "3", "one of logits, lowres_logits, labels"),
    ("precision", "null", "one of fp32, fp16, int8"),
    ("dataset", "5", "a string"),
])
def test_a_field_of_the_wrong_type_is_named_with_what_it_must_be(field, stored, expected):
    meta = {**CONTRACT.to_metadata(), f"stpg.{field}": stored}
    with pytest.raises(ContractError) as refused:
        ModelContract.from_metadata(meta, source="m.onnx")
    assert str(refused.value) == (f"m.onnx: model contract field stpg.{field} must be {expected}, got {stored}; "
                                  "re-export it with `python -m export.run`")


@pytest.mark.parametrize("input_shape, output_shape", [
    ([1, 3, 4, 6], [1, 2, 4, 6]),
    (["batch", 3, 4, 6], ["batch", 2, 4, 6]),  # a dynamic batch
    ([1, 3, None, None], [1, 2, None, None]),  # sizes the graph leaves open
    ([], []),  # shapes the runtime does not know
])
def test_graph_shapes_that_agree_with_the_contract_pass(input_shape, output_shape):
    check_graph_shapes(CONTRACT, input_shape, output_shape, "m.onnx")


@pytest.mark.parametrize("contract_changes, input_shape, output_shape, message", [
    ({"input_size": (8, 12)}, [1, 3, 4, 6], [1, 2, 4, 6],
     "the input is (N, 3, 8, 12) but the graph's is (1, 3, 4, 6)"),
    ({"input_layout": "nhwc_uint8"}, [1, 3, 4, 6], [1, 2, 4, 6],
     "the input is (N, 4, 6, 3) but the graph's is (1, 3, 4, 6)"),
    ({}, [1, 3, 4, 6], [1, 5, 4, 6], "the output is (N, 2, 4, 6) but the graph's is (1, 5, 4, 6)"),
    ({"output_kind": "labels"}, [1, 3, 4, 6], [1, 2, 4, 6], "the output is (N, 4, 6) but the graph's is (1, 2, 4, 6)"),
    ({"output_kind": "lowres_logits"}, [1, 3, 4, 6], [1, 3, 1, 2], "the output is (N, 2, ?, ?) but the graph's is (1, 3, 1, 2)"),
])
def test_a_contract_that_is_not_the_graphs_is_refused(contract_changes, input_shape, output_shape, message):
    contract = ModelContract(**{**CONTRACT.__dict__, **contract_changes})
    with pytest.raises(EngineError) as refused:
        check_graph_shapes(contract, input_shape, output_shape, "m.onnx")
    assert str(refused.value) == (f"m.onnx: its model contract says {message}; re-export it with "
                                  "`python -m export.run` so the two agree")
