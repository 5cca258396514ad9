"""Stage concurrency, frame accounting and post-processing of the runtime pipeline.

A fake engine stands in for the network: it returns a label map filled with the input's
first byte, so every output can be traced back to the frame it came from.
"""
from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest

from runtime import ops
from runtime.contract import ModelContract
from runtime.engines.base import Engine
from runtime.pipeline import (STAGES, Frame, Processor, RunStats, ThreadBudget, letterbox_region, needs_letterbox,
                              percentiles, run_pipeline, thread_budget)
from runtime.segment import format_summary, parse_args
from runtime.video import Sink

SIZE_HW = (6, 8)


def contract(output_kind="labels", input_layout="nhwc_uint8", classes=3, input_size=SIZE_HW) -> ModelContract:
    return ModelContract(
        classes=tuple(f"c{i}" for i in range(classes)),
        palette=((255, 0, 0), (0, 255, 0), (0, 0, 255))[:classes],
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=input_size,
        input_layout=input_layout, output_kind=output_kind)


class TracingEngine(Engine):
    """Labels = the input's first byte, after `delay_s` (sleeping releases the GIL like a real engine)."""

    name = "tracing"

    def __init__(self, delay_s=0.0, fail_at=None):
        self.contract = contract()
        self.delay_s = delay_s
        self.fail_at = fail_at
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("engine failed on purpose")
        time.sleep(self.delay_s)
        return np.full((1, *batch.shape[1:3]), batch[0, 0, 0, 0], np.uint8)


class FixedEngine(Engine):
    """Returns one prepared output whatever the input."""

    def __init__(self, contract_, output):
        self.contract = contract_
        self.output = output

    def infer(self, batch):
        return self.output


class RecordingSink(Sink):
    needs_overlay = True
    needs_labels = True

    def __init__(self):
        self.written = []
        self.closed = self.aborted = False

    def write(self, index, overlay, labels):
        self.written.append((index, int(labels[0, 0]), overlay.shape))

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def frames(count, size_hw=SIZE_HW):
    """Frames whose every byte is their index, so the fake engine echoes it back."""
    for index in range(count):
        yield index, np.full((*size_hw, 3), index, np.uint8)


# ------------------------------------------------------------------------------ statistics


def test_percentiles_interpolate_linearly():
    # Sorted [1, 2, 3, 4]: position q/100 * 3 -> p50 at 1.5 -> 2.5, p90 at 2.7 -> 3.7, p99 at 2.97 -> 3.97.
    result = percentiles([4.0, 1.0, 3.0, 2.0])
    assert result == pytest.approx({"p50": 2.5, "p90": 3.7, "p99": 3.97})
    assert percentiles([5.0], qs=(10, 99.9)) == {"p10": 5.0, "p99.9": 5.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_frame_times_in_milliseconds():
    frame = Frame(0, np.zeros((1, 1, 3), np.uint8),
                  {"decode": (1_000_000, 3_000_000), "encode": (9_000_000, 10_500_000)})
    assert frame.stage_ms("decode") == 2.0
    assert frame.stage_ms("encode") == 1.5
    assert frame.glass_to_glass_ms() == 7.5  # decode end 3 ms -> encode end 10.5 ms


def test_run_stats_summary():
    stats = RunStats(frames_in=10, frames_out=8, dropped=2, corrupt=1, wall_s=4.0)
    for stage in stats.latency_ms:
        for value in (1.0, 3.0):
            stats.latency_ms[stage].add(value)
    summary = stats.summary()
    assert summary["fps"] == 2.0
    assert {k: summary[k] for k in ("frames_in", "frames_out", "dropped", "corrupt", "interrupted")} == {
        "frames_in": 10, "frames_out": 8, "dropped": 2, "corrupt": 1, "interrupted": False}
    assert set(summary["latency_ms"]) == {*STAGES, "glass_to_glass"}
    assert summary["latency_ms"]["infer"] == pytest.approx({"p50": 2.0, "p90": 2.8, "p99": 2.98})


# ------------------------------------------------------------------------- post-processing


def test_lowres_logits_become_frame_size_labels():
    lowres = np.zeros((1, 2, 2, 2), np.float32)
    lowres[0, 0, :, 0] = 1.0  # class 0 scores 1 in the left column, class 1 in the right
    lowres[0, 1, :, 1] = 1.0
    processor = Processor(FixedEngine(contract("lowres_logits", "nchw_float", classes=2), lowres), letterbox="off")
    labels, _ = processor.postprocess(processor.infer(None), (3, 5))
    # align_corners: columns 0..4 sample x = 0, .25, .5, .75, 1, where class 0 scores 1 - x and
    # class 1 scores x; at x = .5 both score .5 and the lower index wins.
    np.testing.assert_array_equal(labels, np.array([[0, 0, 0, 1, 1]] * 3, np.uint8))


def test_full_logits_become_input_size_labels():
    logits = np.array([[[[0.0, 2.0], [1.0, -1.0]], [[1.0, 1.0], [1.0, 0.0]]]], np.float32)
    processor = Processor(FixedEngine(contract("logits", "nchw_float", classes=2), logits), letterbox="off")
    labels, _ = processor.postprocess(logits, (40, 40))
    np.testing.assert_array_equal(labels, np.array([[1, 0], [0, 1]], np.uint8))  # the (1, 0) tie goes to class 0


def test_label_outputs_pass_through_as_uint8():
    output = np.array([[[2, 0], [1, 2]]], np.int64)
    processor = Processor(FixedEngine(contract("labels"), output), letterbox="off")
    labels, _ = processor.postprocess(output, (2, 2))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[2, 0], [1, 2]])


def test_frame_labels_are_sampled_nearest_like_the_overlay():
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(Processor.frame_labels(labels, (4, 4)),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    # 3 -> 2 columns: floor(d * 3 / 2) = 0, 1.
    np.testing.assert_array_equal(Processor.frame_labels(np.array([[5, 6, 7]], np.uint8), (1, 2)), [[5, 6]])
    assert Processor.frame_labels(labels, (2, 2)) is labels


def test_preprocess_adds_the_batch_axis_in_the_contract_layout():
    processor = Processor(TracingEngine())
    batch = processor.preprocess(np.full((12, 16, 3), 7, np.uint8))
    assert batch.shape == (1, *SIZE_HW, 3) and batch.dtype == np.uint8
    assert np.all(batch == 7)


def test_render_overlays_the_palette():
    processor = Processor(TracingEngine(), alpha=1.0)
    overlay = processor.render(np.zeros((2, 2, 3), np.uint8), np.array([[0, 1], [2, 255]], np.uint8))
    # RGB palette drawn as BGR; label 255 keeps the frame pixel.
    np.testing.assert_array_equal(overlay, [[[0, 0, 255], [0, 255, 0]], [[255, 0, 0], [0, 0, 0]]])


# ------------------------------------------------------------------------------ letterbox


@pytest.mark.parametrize("frame_hw, input_hw, region", [
    # 1920 * 512 / 1080 = 910.2 -> 908 wide; (1024 - 908) / 2 = 58 -> 56.
    ((1080, 1920), (512, 1024), (0, 56, 512, 908)),
    # portrait phone: 1080 * 512 / 1920 = 288 wide, (1024 - 288) / 2 = 368 from the left.
    ((1920, 1080), (512, 1024), (0, 368, 512, 288)),
    # 4:3: 640 * 256 / 480 = 341.3 -> 340; (512 - 340) / 2 = 86 -> 84.
    ((480, 640), (256, 512), (0, 84, 256, 340)),
    # 4:1 panorama: the width limits, 256 * 512 / 1024 = 128 high, (256 - 128) / 2 = 64 down.
    ((256, 1024), (256, 512), (64, 0, 128, 512)),
    ((256, 512), (256, 512), (0, 0, 256, 512)),
    # a 6-row input is no multiple of the stride: rows stay exact, columns round to 4.
    ((40, 40), (6, 8), (0, 0, 6, 4)),
])
def test_letterbox_region_by_hand(frame_hw, input_hw, region):
    assert letterbox_region(frame_hw, input_hw) == region


def test_letterbox_auto_only_beyond_the_tolerance():
    assert needs_letterbox("auto", (1080, 1920), (512, 1024))  # 16:9 on 2:1 is 12.5 % off
    assert not needs_letterbox("auto", (512, 1000), (512, 1024))  # 2.3 % off
    assert needs_letterbox("on", (512, 1024), (512, 1024))
    assert not needs_letterbox("off", (1920, 1080), (512, 1024))


def test_letterboxed_frame_is_padded_and_its_labels_cropped():
    # An 8x8 frame on an 8x16 input sits in columns 4..11 (region (0, 4, 8, 8)).
    lowres = np.zeros((1, 3, 2, 4), np.float32)
    lowres[0, 2, :, [0, 3]] = 9.0  # the padding's logits would say class 2
    lowres[0, 0, :, 1] = lowres[0, 1, :, 2] = 1.0  # the frame: class 0 left, class 1 right
    engine = FixedEngine(contract("lowres_logits", "nchw_float", input_size=(8, 16)), lowres)
    processor = Processor(engine)
    frame = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert processor.region((8, 8)) == (0, 4, 8, 8) and processor.region((8, 16)) is None
    batch = processor.preprocess(frame)
    assert not batch[0, :, :, :4].any() and not batch[0, :, :, 12:].any()
    np.testing.assert_array_equal(batch[0, :, :, 4:12], ops.preprocess(frame, (8, 8), (0, 0, 0), (1, 1, 1)))
    labels, _ = processor.postprocess(lowres, (8, 8))
    # The cropped logits are columns 1..2: class 0 then class 1, upsampled to the frame.
    np.testing.assert_array_equal(labels, np.array([[0, 0, 0, 0, 1, 1, 1, 1]] * 8, np.uint8))
    stretched, _ = Processor(engine, letterbox="off").postprocess(lowres, (8, 8))
    assert (stretched == 2).any()


def test_letterboxed_label_outputs_are_cropped_to_the_frame():
    output = np.arange(6 * 8, dtype=np.uint8).reshape(1, 6, 8)
    processor = Processor(FixedEngine(contract("labels"), output), letterbox="on")
    # A 6x4 frame on the 6x8 input: 4 columns, offset (8 - 4) / 2 = 2 rounded down to the stride, 0.
    assert processor.region((6, 4)) == (0, 0, 6, 4)
    np.testing.assert_array_equal(processor.postprocess(output, (6, 4))[0], output[0, :, :4])


def test_unknown_letterbox_mode_is_refused():
    with pytest.raises(ValueError, match="letterbox"):
        Processor(TracingEngine(), letterbox="fit")


# ------------------------------------------------------------------------------ threads


@pytest.mark.parametrize("kwargs, expected", [
    ({"cores": 2}, (2, 1)),                      # inference on every core, the ops between inferences
    ({"cores": 8}, (8, 1)),
    ({"cores": 8, "ops_threads": 3}, (5, 3)),    # the ops' choice, inference the rest
    ({"cores": 8, "inference": 6}, (6, 2)),      # inference's choice, the ops the rest
    ({"cores": 2, "inference": 2}, (2, 1)),      # at least one op thread
    ({"cores": 2, "inference": 2, "ops_threads": 2}, (2, 2)),  # both given: kept, oversubscribed
    ({"cores": 1}, (1, 1)),
    ({"cores": 4, "inference": 3, "ops_threads": 3}, (3, 3)),  # both given: kept
])
def test_thread_budget_by_hand(kwargs, expected):
    budget = thread_budget(**kwargs)
    assert (budget.inference, budget.ops) == expected and budget.cores == kwargs["cores"]
    assert budget.oversubscribed == (sum(expected) > kwargs["cores"] + 1 or max(expected) > kwargs["cores"])


def test_thread_budget_without_cpu_inference_and_its_text():
    assert thread_budget(cores=4, cpu_inference=False) == ThreadBudget(cores=4, inference=None, ops=1)
    assert thread_budget(cores=2).describe() == "threads: inference 2 + ops 1 on 2 cores (ops between inferences)"
    assert thread_budget(cores=2, inference=1).describe() == "threads: inference 1 + ops 1 on 2 cores"
    assert thread_budget(cores=2, inference=2, ops_threads=2).describe() == \
        "threads: inference 2 + ops 2 on 2 cores (more threads than cores)"
    assert ThreadBudget(4, None, 2).describe() == "threads: inference on its device + ops 2 on 4 cores"
    assert thread_budget(cores=3).summary() == {"cores": 3, "inference": 3, "ops": 1}


def test_segment_prints_its_thread_split_and_letterbox_and_names_the_default():
    summary = RunStats(frames_in=1, frames_out=1, wall_s=1.0).summary()
    summary.update(threads={"cores": 2, "inference": 1, "ops": 1},
                   letterbox={"mode": "auto", "region": [0, 56, 512, 908]})
    assert "threads: inference 1 + ops 1 on 2 cores; letterbox auto: 512x908" in format_summary(summary)
    summary["letterbox"]["region"] = None
    assert "letterbox auto: off" in format_summary(summary)
    args = parse_args(["--model", "m.onnx", "--source", "v.mp4"])
    assert (args.letterbox, args.threads, args.op_threads) == ("auto", None, None)


# ---------------------------------------------------------------------------------- runs


def test_offline_run_keeps_every_frame_in_order():
    sink, finished = RecordingSink(), []
    stats = run_pipeline(frames(40), Processor(TracingEngine(delay_s=0.002)), [sink], queue_size=2,
                         on_frame=finished.append)
    assert [index for index, _, _ in sink.written] == list(range(40))
    assert [label for _, label, _ in sink.written] == list(range(40))  # each output is its own frame's
    assert {shape for _, _, shape in sink.written} == {(*SIZE_HW, 3)}
    assert (stats.frames_in, stats.frames_out, stats.dropped) == (40, 40, 0)
    assert sink.closed and not sink.aborted
    assert all(len(samples) == 40 for samples in stats.latency_ms.values())
    assert [frame.index for frame in finished] == list(range(40))


def owner(array):
    while array.base is not None:
        array = array.base
    return array


class KeepingEngine(TracingEngine):
    """Also keeps every input tensor's owning array alive, so identities cannot be recycled by
    the allocator: only the pipeline can hand the same buffer out twice."""

    def __init__(self):
        super().__init__(delay_s=0.001)
        self.inputs = []

    def infer(self, batch):
        self.inputs.append(owner(batch))
        return super().infer(batch)


class CheckingSink(RecordingSink):
    """Checks at write time that the overlay is its own frame's, as a fresh render draws it."""

    def __init__(self, processor):
        super().__init__()
        self.processor, self.overlays, self.mismatches = processor, [], []

    def write(self, index, overlay, labels):
        frame = np.full((*SIZE_HW, 3), index, np.uint8)
        if not np.array_equal(overlay, self.processor.render(frame, np.full(SIZE_HW, index, np.uint8))):
            self.mismatches.append(index)
        self.overlays.append(owner(overlay))
        super().write(index, overlay, labels)


def test_stream_reuses_its_buffers_without_mixing_frames():
    engine = KeepingEngine()
    processor = Processor(engine)
    sink = CheckingSink(processor)
    run_pipeline(frames(60), processor, [sink], queue_size=2)
    assert [label for _, label, _ in sink.written] == list(range(60)) and sink.mismatches == []
    # at most the frames in flight at once get their own buffer, not one per frame
    assert len({id(a) for a in engine.inputs}) <= 2 + 4 and len({id(a) for a in sink.overlays}) <= 2 + 4


def test_per_stage_timestamps_follow_the_frame_through_the_stages():
    finished = []
    run_pipeline(frames(10), Processor(TracingEngine(delay_s=0.001)), [RecordingSink()], on_frame=finished.append)
    for frame in finished:
        times = [t for stage in STAGES for t in frame.stamps[stage]]
        assert times == sorted(times), frame.stamps
    assert [f.stamps["decode"][1] for f in finished] == sorted(f.stamps["decode"][1] for f in finished)


def test_real_time_run_drops_the_oldest_frames_when_inference_lags():
    sink = RecordingSink()
    stats = run_pipeline(frames(60), Processor(TracingEngine(delay_s=0.02)), [sink], realtime=True)
    indices = [index for index, _, _ in sink.written]
    assert stats.dropped > 0
    assert stats.frames_out + stats.dropped == stats.frames_in == 60
    assert len(indices) == stats.frames_out
    assert all(a < b for a, b in zip(indices, indices[1:]))
    assert [label for _, label, _ in sink.written] == indices
    assert indices[-1] == 59  # the end of the stream is never dropped in favour of older frames


def test_paced_real_time_source_is_released_at_its_frame_rate():
    stats = run_pipeline(frames(6), Processor(TracingEngine()), [RecordingSink()], realtime=True, pace_fps=50.0)
    # real time may drop a frame when a loaded machine is slow; every frame is still read, at its time
    assert stats.frames_in == 6 and stats.frames_out + stats.dropped == 6
    assert stats.wall_s >= 5 / 50.0  # the sixth frame is not read before 5 periods have passed


def test_max_frames_stops_reading():
    sink = RecordingSink()
    stats = run_pipeline(frames(30), Processor(TracingEngine()), [sink], max_frames=5)
    assert [index for index, _, _ in sink.written] == [0, 1, 2, 3, 4]
    assert stats.frames_in == 5


def test_corrupt_count_comes_from_the_source():
    class CountingSource:
        corrupt_frames = 0

        def __iter__(self):
            yield 0, np.zeros((*SIZE_HW, 3), np.uint8)
            self.corrupt_frames = 2
            yield 3, np.full((*SIZE_HW, 3), 3, np.uint8)

    stats = run_pipeline(CountingSource(), Processor(TracingEngine()), [RecordingSink()])
    assert (stats.frames_out, stats.corrupt) == (2, 2)


def test_failing_stage_stops_the_run_aborts_the_sinks_and_raises():
    sink = RecordingSink()
    threads_before = threading.active_count()
    with pytest.raises(RuntimeError, match="on purpose"):
        run_pipeline(frames(1000), Processor(TracingEngine(fail_at=5)), [sink], queue_size=2)
    assert sink.aborted and not sink.closed
    assert len(sink.written) <= 4
    assert threading.active_count() == threads_before


def test_failing_sink_is_reported_and_aborted():
    class BrokenSink(RecordingSink):
        def write(self, index, overlay, labels):
            raise OSError("disk full")

    sink = BrokenSink()
    with pytest.raises(OSError, match="disk full"):
        run_pipeline(frames(10), Processor(TracingEngine()), [sink])
    assert sink.aborted and not sink.closed


def test_ctrl_c_stops_the_stages_and_finishes_the_sinks():
    sink = RecordingSink()

    def interrupt_after_third(frame):
        if frame.index == 2:
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    stats = run_pipeline(frames(1000), Processor(TracingEngine(delay_s=0.005)), [sink], on_frame=interrupt_after_third)
    assert stats.interrupted
    assert sink.closed and not sink.aborted
    assert 3 <= stats.frames_out < 1000
    assert [index for index, _, _ in sink.written] == list(range(stats.frames_out))


# ------------------------------------------------------------------------- non-finite logits


class PoisonedLogitsEngine(Engine):
    """Low-resolution logits (2 classes, 2 x 2) from the input's first byte b: class 0 scores 1
    and class 1 scores 0, except that frames with b % 3 == 0 get `poison` in one of class 1's
    entries."""

    def __init__(self, poison, kind="lowres_logits"):
        self.contract = contract(kind, "nhwc_uint8", classes=2)
        self.poison = poison

    def infer(self, batch):
        logits = np.zeros((1, 2, 2, 2), np.float16)
        logits[0, 0] = 1.0
        if batch[0, 0, 0, 0] % 3 == 0:
            logits[0, 1, 1, 1] = self.poison
        return logits


@pytest.mark.parametrize("kind", ["lowres_logits", "logits"])
@pytest.mark.parametrize("poison, corner_label", [(np.nan, 0), (-np.inf, 0), (np.inf, 1)])
def test_frames_with_non_finite_logits_are_counted(kind, poison, corner_label):
    """Frames 0, 3, 6, 9 of 10 carry the poison: 4 counted, and their labels follow the
    reference's rule (NaN and -inf lose to class 0's 1, +inf wins)."""
    sink = RecordingSink()
    finished = []
    processor = Processor(PoisonedLogitsEngine(poison, kind), letterbox="off")
    stats = run_pipeline(frames(10), processor, [sink], on_frame=lambda frame: finished.append(
        (frame.index, frame.nonfinite, int(frame.labels[-1, -1]))))
    assert stats.nonfinite_frames == 4 and stats.summary()["nonfinite_frames"] == 4
    assert sorted(finished) == [(i, i % 3 == 0, corner_label if i % 3 == 0 else 0) for i in range(10)]


def test_finite_logits_and_label_outputs_count_no_frames():
    assert run_pipeline(frames(5), Processor(PoisonedLogitsEngine(7.0), letterbox="off")).nonfinite_frames == 0
    assert run_pipeline(frames(5), Processor(TracingEngine())).nonfinite_frames == 0

