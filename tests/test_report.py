"""Published tables come from metrics files only (tools/report.py)."""
import json

import pytest

from tools import report


def ssl_row(arm, seed, miou, seconds, timed=2000, threads=2):
    return {"arm": arm, "method": "supervised" if arm == "full" else arm, "seed": seed, "miou": miou,
            "seconds_per_iteration": seconds, "iterations_timed": timed, "iters": 2000, "threads": threads,
            "train_seconds": round(seconds * timed, 1), "num_labeled": 25, "num_unlabeled": 375, "precision": "bfloat16",
            "params": {"ssl_benchmark": {"data": {"height": 128, "width": 256, "num_val": 100}, "labeled_ratio": 16,
                                         "warmup_iters": 500},
                       "train": {"iters": 2000, "batch_size": 8, "crop": [64, 128]}, "model": {"backbone": "resnet18"}}}


def test_readme_and_docs_blocks_match_the_committed_metrics():
    assert report.main(["--check"]) == 0


def test_ssl_table_from_hand_made_rows():
    rows = [ssl_row("full", 1, 0.30, 0.2), ssl_row("full", 2, 0.32, 0.21),
            ssl_row("supervised", 1, 0.20, 0.2, timed=600), ssl_row("supervised", 2, 0.21, 0.19),
            ssl_row("stpg", 1, 0.25, 0.9, threads=1)]
    summary = {"arms": {"full": {"mean": 0.31, "spread": 0.02, "seeds": 2},
                        "supervised": {"mean": 0.205, "spread": 0.01, "seeds": 2},
                        "stpg": {"mean": 0.25, "spread": 0.0, "seeds": 1}},
               "gate": {"full_miou": 0.31, "sup_miou": 0.205, "headroom": 0.105, "seed_spread": 0.02, "passed": True},
               "recovered": {"stpg": 0.4286}, "missing": ["stpg-2"],
               "paired_gain": {"full": {"1": 0.10, "2": 0.11}, "stpg": {"1": 0.05}}}
    text = report.render_ssl_benchmark(summary, rows)
    # 0.9 s x 2000 iterations = 30 minutes; a row resumed from an untimed checkpoint says what was timed
    assert "| STPG (Gen-Student) | 25.00 | - | 25.00 | - | +5.00 / - | 43 % | 0.900 (1) / - | 30 / - |" in text
    assert ("| supervised, labeled images only | 20.00 | 21.00 | 20.50 | 1.00 | - | - | 0.200 (2) / 0.190 (2) "
            "| 2 (600 of 2000 it) / 6 |") in text
    assert "= 10.50 points, seed spread 2.00: **passed**" in text
    assert "Rows still to run: stpg-2" in text
    assert text.startswith("25 labeled / 375 unlabeled synthetic images at 128x256 (1/16)")


def test_signals_table_lists_each_method_s_own_terms():
    rows = [{"arm": "supervised", "seed": 1, "final_losses": {"loss": 0.5, "sup": 0.5, "lr": 1e-5}},
            {"arm": "lpl", "seed": 2, "final_losses": {"loss": 1.0, "sup": 0.4, "pct": 9.15e-25, "pct_weight": 0.0}},
            {"arm": "stpg", "seed": 1, "final_losses": {"sup": 0.8, "contrast": 5.13826, "selected": 0.83415}},
            {"arm": "lpl_stage2", "seed": 1, "final_losses": {"loss": 0.48, "sup": 0.48}, "pseudo_mask_miou": 0.31234}]
    assert report.render_ssl_signals(rows).splitlines() == [
        "| row | the method's own signals at its last logged iteration |", "|---|---|",
        "| lpl-2 | pct 9.15e-25, pct_weight 0 |", "| stpg-1 | contrast 5.14, selected 0.834 |",
        "| lpl_stage2-1 | pseudo_mask_miou 0.312 |"]
    assert report.render_ssl_signals(rows[:1]) == "Not measured yet: run `make ssl-benchmark`."


def test_missing_metrics_name_the_command():
    assert report.render_ssl_benchmark(None, []) == "Not measured yet: run `make ssl-benchmark`."
    assert report.render_export(None) == "Not measured yet: run `make demo`."


def test_fill_replaces_only_its_block(tmp_path):
    text = "a\n<!-- report:x -->\nold\nlines\n<!-- /report:x -->\nb\n"
    assert report.fill(text, "x", "new", "f.md") == "a\n<!-- report:x -->\nnew\n<!-- /report:x -->\nb\n"
    assert report.fill("<!-- report:x -->\n<!-- /report:x -->\n", "x", "t\n", "f.md") == \
        "<!-- report:x -->\nt\n<!-- /report:x -->\n"


def test_export_table_from_a_hand_made_report():
    export = {"verify_images": 2, "input_size": [64, 128], "tensorrt": {"status": "skipped"},
              "artefacts": {"onnx_int8": {"size_bytes": 16_800_000, "miou": 0.1114, "miou_torch": 0.1120,
                                          "miou_delta_points": -0.06, "label_agreement": 0.96331,
                                          "max_abs_logit_delta": 0.51}}}
    text = report.render_export(export)
    assert "| onnx_int8 | 16.8 | 11.14 | 11.20 | -0.06 | 0.9633 | 0.51 |" in text
    json.dumps(export)  # the renderer must not have mutated the report


def test_demo_summary_names_each_model_and_the_next_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "METRICS", tmp_path / "metrics")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"miou": 0.1234, "pixel_acc": 0.8}))
    (tmp_path / "metrics/demo.json").write_text(json.dumps({"int8": {"miou": 0.18181, "fps": 16.84, "p99_ms": 951.2}}))
    text = report.demo_summary()
    assert "models/gen_student.pt: val mIoU 12.34 %" in text
    assert "int8 artefact on the demo clip: mIoU 18.18 %, 16.8 FPS, p99 glass to glass 951 ms" in text
    assert "models/baseline.pt: val mIoU not evaluated" in text
    assert "outputs/demo_overlay.mp4 (missing)" in text and "make ssl-benchmark" in text


def test_superseded_protocols_render_from_their_archived_rows(tmp_path, monkeypatch):
    from training.ssl_summary import archive

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "METRICS", tmp_path / "metrics")
    folder = tmp_path / "metrics/ssl_history/1-16"
    folder.mkdir(parents=True)
    for arm, seed, miou in (("full", 1, 0.27), ("full", 2, 0.26), ("supervised", 1, 0.22), ("supervised", 2, 0.23)):
        (folder / f"{arm}-{seed}.json").write_text(json.dumps(ssl_row(arm, seed, miou, 0.3)))
    summary = archive(folder)
    assert summary["gate"]["headroom"] == pytest.approx(0.04) and not summary["gate"]["passed"]
    text = report.render_history()
    assert text.startswith("#### `metrics/ssl_history/1-16`")
    assert "= 4.00 points, seed spread 1.00: **not passed**" in text
    summary["missing"] = ["supervised-3"]
    assert report.render_ssl_benchmark(summary, [], superseded=True).endswith(
        "Never run: supervised-3 (the protocol was superseded first; `make ssl-benchmark` runs the current one).")


def test_precision_table_from_a_hand_made_probe():
    probe = {"arm": "stpg", "seed": 1, "trained_in": "bfloat16", "val_miou": {"fp32": 0.254321, "bf16": 0.25401},
             "unlabeled_images": 64, "confident_threshold": 0.95,
             "teachers": [{"teacher": 0, "differ": 0.01234, "confident": 0.8, "differ_confident": 0.001},
                          {"teacher": 1, "differ": 0.02, "confident": 0.5, "differ_confident": None}]}
    text = report.render_precision([probe])
    assert "| stpg-1 | bfloat16 | 25.432 | 25.401 | 0 | 1.23 % | 80.00 % | 0.10 % |" in text
    assert "| stpg-1 | bfloat16 | 25.432 | 25.401 | 1 | 2.00 % | 50.00 % | - |" in text
    assert report.arm_name("stpg_fp32") == "STPG (Gen-Student), trained in fp32"


def test_check_compares_with_the_committed_metrics_not_a_local_run(tmp_path, monkeypatch):
    """`make demo` rewrites metrics/ with this machine's run; `--check` (make test) reads HEAD's."""
    import subprocess

    from tools.lock import Revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"miou": 0.1120, "pixel_acc": 0.6068}))
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "results")
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"miou": 0.5, "pixel_acc": 0.9}))  # a local run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "SOURCE", Revision("HEAD", tmp_path))
    assert report._load("eval.json") == {"miou": 0.1120, "pixel_acc": 0.6068}
    assert "| 11.20 | 60.68 |" in report.render_demo({"STPG": report._load("eval.json")})
    monkeypatch.setattr(report, "SOURCE", Revision(None, tmp_path))
    assert report._load("eval.json")["miou"] == 0.5


def test_stale_results_are_marked_with_the_commit_that_holds_them(monkeypatch):
    monkeypatch.setattr(report, "_stale", lambda: {"ssl_run@stpg-1": ["training/engine.py"], "export": ["export"]})
    monkeypatch.setattr(report.SOURCE, "commit_of", lambda rel: {"metrics/ssl/stpg-1.json": "abc1234"}.get(rel))
    rows = [ssl_row("supervised", 1, 0.20, 0.2), ssl_row("stpg", 1, 0.25, 0.9)]
    summary = {"arms": {"supervised": {"mean": 0.20, "spread": 0.0, "seeds": 1},
                        "stpg": {"mean": 0.25, "spread": 0.0, "seeds": 1}}, "paired_gain": {"stpg": {"1": 0.05}}}
    text = report.render_ssl_benchmark(summary, rows, mark_stale=True)
    assert "| STPG (Gen-Student) | 25.00* |" in text and "| supervised, labeled images only | 20.00 |" in text
    assert ("**Stale** (rows marked *): code these ran on has changed since (training/engine.py). Each figure is "
            "the one that ran, committed in: stpg-1 abc1234.") in text
    assert "**Stale**" not in report.render_ssl_benchmark(summary, rows[:1], mark_stale=True)


def test_rig_block_renders_the_benchmark_s_rig_and_soak_levels(monkeypatch):
    monkeypatch.setattr(report, "_stale", lambda: {})
    assert report.render_rig(None) == report.render_rig({"model": {}}) == "Not measured yet: run `dvc repro benchmark`."
    run = lambda fps, rss: {"processes": 1, "fps": fps, "camera_fps": [fps], "worst_p99_glass_to_glass_ms": 50.0,  # noqa: E731
                            "rss_mb": rss}
    bench = {"config": {"rig_model": "gen_student_int8", "video": "clip.mp4", "rig_frames": 120, "encode": True},
             "rig": {"1": {"rig": run(16.0, 200), "separate": run(16.0, 210), "fps_ratio": 1.0, "rss_ratio": 200 / 210}},
             "soak": {"frames": 2000, "window": 1000, "fps": 16.0, "rss_ratio": 1.004, "fds_added": 0, "p99_ratio": 1.1,
                      "windows": [{"frames": 1000, "rss_mb": 250.0, "fds": 20, "p99_ms": 400.0}]}}
    text = report.render_rig(bench)
    assert text.startswith("#### Rig (gen_student_int8, clip.mp4, 120 frames per camera, offline into H.264)")
    assert "| 1 | rig | 1 | 16.00 | 16.00 | 50.00 | 200 |" in text and "#### Soak" in text
    assert "| 1000 | 250.0 | 20 | 400.00 |" in text


def test_drive_block_renders_the_benchmark_s_drive_level(monkeypatch):
    monkeypatch.setattr(report, "_stale", lambda: {})
    assert report.render_drive(None) == report.render_drive({"rig": {}}) == "Not measured yet: run `dvc repro benchmark`."
    run = lambda fps: {"processes": 1, "fps": fps, "camera_fps": [fps / 2, fps / 2],  # noqa: E731
                       "worst_p99_glass_to_glass_ms": 80.0, "rss_mb": 300.0}
    bench = {"config": {"rig_model": "gen_student_int8", "video": "clip.mp4"},
             "drive": {"frames": 240, "topics": ["/a", "/b"], "mp4": run(20.0), "drive": run(19.0), "fps_ratio": 0.95}}
    text = report.render_drive(bench)
    assert text.startswith("#### Recorded drive (gen_student_int8, clip.mp4, 240 frames per camera)")
    assert "| video | H.264 overlays | 20.00 | 10.00 | 80.00 | 300 |" in text
    assert "| MCAP drive | output bag | 19.00 | 9.50 | 80.00 | 300 |" in text and "Drive / video: 0.95x the FPS." in text
