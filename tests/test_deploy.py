import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from agilenn_jax import inference, layout
from agilenn_jax.deploy import cost, export, int8, tflite
from agilenn_jax.deploy.tflm import TFLMRunner
from tests.conftest import ROOT
from tests.helpers import assert_int8_verified


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    return export.export(trained_workdir, out, num_calibration=64, num_verify=64), out


def test_int8_model_runs_on_tflm_and_matches_jax(exported):
    report, out = exported
    for name in (
        "device_float32.tflite",
        "device_int8.tflite",
        "agilenn_device_model.h",
        "agilenn_device_model.cc",
        "export_report.json",
        "device_meta.json",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(report["ops"])
    assert set(report["ops"]) <= tflite.TFLM_BUILTINS
    assert_int8_verified(report)  # worst feature within 0.3, mean within one int8 step
    # TFLM and the TFLite interpreter: same conv kernels (identical features and indices); their
    # SUM/MEAN reference kernels round differently, so logits agree closely, not bit-exactly.
    tflm, lite = report["verification"]["tflm"], report["verification"]["tflite"]
    for key in ("features_max_abs_err", "features_mean_abs_err", "index_agreement"):
        assert tflm[key] == lite[key], key
    assert abs(tflm["local_logits_mean_abs_err"] - lite["local_logits_mean_abs_err"]) < 0.01
    b = report["budget"]
    assert 0 < b["flash_bytes"] < cost.FLASH_BUDGET and 0 < b["arena_bytes"] < cost.SRAM_BUDGET
    assert report["latency_estimate"]["ms_at_64mhz"] > report["latency_estimate"]["ms_at_216mhz"]
    with open(os.path.join(out, "export_report.json")) as f:
        assert json.load(f)["budget"] == b


def test_tflm_runner_matches_report_and_indices_are_exact(exported, trained_workdir):
    report, out = exported
    with open(os.path.join(out, "device_int8.tflite"), "rb") as f:
        model = f.read()
    runner = TFLMRunner(model)
    assert runner.arena_bytes() == report["budget"]["arena_bytes"]
    meta = report["device"]
    c = np.asarray(meta["centroids"])
    rng = np.random.default_rng(0)
    img = rng.normal(size=(1, meta["image_size"], meta["image_size"], 3)).astype(np.float32)
    logits_q, feat_q = runner(img)
    assert logits_q.shape == (1, meta["num_classes"]) and feat_q.dtype == np.int8
    idx = int8.indices_from_int8(feat_q, np.asarray(meta["int8_thresholds"]))
    # The threshold lookup is nearest-centroid on the dequantized value, for every int8 value.
    q = np.arange(-128, 128, dtype=np.int8)
    deq = int8.dequantize(q, meta["quant"]["remote_features"])
    np.testing.assert_array_equal(
        int8.indices_from_int8(q, np.asarray(meta["int8_thresholds"])),
        np.argmin(np.abs(deq[:, None] - c[None]), axis=1),
    )
    assert idx.max() < len(c)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_firmware_files_compile(exported, tmp_path):
    _, out = exported
    r = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-c",
            os.path.join(out, "agilenn_device_model.cc"),
            "-o",
            str(tmp_path / "m.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_export_errors(trained_workdir, tmp_path, monkeypatch):
    with pytest.raises(export.ExportError, match="config.json"):
        export.export(str(tmp_path), str(tmp_path / "o"))
    # A workdir whose checkpoint is missing.
    wd = tmp_path / "nockpt"
    wd.mkdir()
    shutil.copy(os.path.join(trained_workdir, "config.json"), wd / "config.json")
    with pytest.raises(export.ExportError, match="no AgileNN checkpoint"):
        export.export(str(wd), str(tmp_path / "o"))
    # Over the flash budget: a clear error, unless explicitly allowed.
    monkeypatch.setattr(cost, "FLASH_BUDGET", 1024)
    with pytest.raises(export.ExportError, match="allow_over_budget"):
        export.export(trained_workdir, str(tmp_path / "o"), 32, 16)
    assert not os.path.exists(tmp_path / "o" / "export_report.json")
    report = export.export(trained_workdir, str(tmp_path / "o"), 32, 16, allow_over_budget=True)
    assert report["over_budget"] == ["flash"]


def test_export_cli(trained_workdir, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.export",
            f"--workdir={trained_workdir}",
            f"--output_dir={tmp_path}",
            "--num_calibration=32",
            "--num_verify=16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AgileNN device export" in r.stdout and "est. latency" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "launch.export", f"--workdir={tmp_path}/missing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode != 0 and "error:" in r.stderr


def test_config_mismatch_is_a_clear_error(trained_workdir, tmp_path):
    wd = str(tmp_path / "wd")
    shutil.copytree(trained_workdir, wd)
    with open(os.path.join(wd, "config.json")) as f:
        cfg = json.load(f)
    cfg["model"]["num_centroids"] = 16
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(export.ExportError, match="does not match"):
        export.export(wd, str(tmp_path / "o"), 16, 16)


def test_non_tflm_ops_are_named():
    tflite.check_tflm_ops(["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    with pytest.raises(tflite.UnsupportedOpsError, match="FlexErf.*TopKV2|TopKV2.*FlexErf"):
        tflite.check_tflm_ops(["CONV_2D", "TopKV2", "FlexErf"])


def test_inference_reads_variables_only_and_leaves_config_alone(trained_workdir):
    run = inference.load_run(trained_workdir)
    assert set(run.variables) == {"params", "batch_stats"}
    assert run.step > 0 and run.meta["stage"] == "agilenn"
    assert isinstance(run.config.model.remote_stages, tuple)  # JSON lists back to tuples
    conv = inference.load_run(trained_workdir, depthwise_impl="conv")
    assert conv.model.depthwise_impl == "conv" and run.model.depthwise_impl == "auto"
    assert run.config.model.depthwise_impl == "auto"  # the override never edits the config
    with pytest.raises(AttributeError):
        run.config.model.not_a_field = 1  # locked, like a launched config
    x = np.zeros((2, 12, 12, 3), np.float32)
    np.testing.assert_allclose(
        inference.forward(run.model, run.variables, x)["logits"],
        inference.forward(conv.model, conv.variables, x)["logits"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_bf16_trained_run_loads_as_float32(trained_workdir, tmp_path):
    """model.dtype is a training-time choice: export and serving build the float32 model."""
    wd = str(tmp_path / "wd")
    shutil.copytree(trained_workdir, wd)
    with open(os.path.join(wd, "config.json")) as f:
        cfg = json.load(f)
    cfg["model"]["dtype"] = "bfloat16"
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(cfg, f)
    run, ref = inference.load_run(wd), inference.load_run(trained_workdir)
    assert run.config.model.dtype == "bfloat16" and run.model.dtype == np.float32
    assert run.model == ref.model
    x = np.zeros((2, 12, 12, 3), np.float32)
    np.testing.assert_array_equal(
        inference.forward(run.model, run.variables, x)["logits"],
        inference.forward(ref.model, ref.variables, x)["logits"],
    )


def test_read_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        layout.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        layout.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text('{"seed": 0}')
    with pytest.raises(ValueError, match="not an AgileNN config"):
        layout.read_config(str(tmp_path))


def _argmin_lowest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The model's rule: nearest centroid, lowest index among equals (np.argmin's tie rule)."""
    return np.argmin(np.abs(x[..., None] - centroids.astype(np.float64)), axis=-1)


@pytest.mark.parametrize(
    "centroids",
    [
        [0.0548, 2.032105, 2.032105, 2.0321093, 2.0934, 3.7561, 4.8289, 5.6336],  # the CIFAR run
        [1.0, 1.0, 1.0, 3.0],
        [0.5, 2.0, 5.5, 5.5],  # a tie at the top
        [0.0, 0.0, 6.0],  # a tie at the bottom
    ],
)
def test_int8_index_rule_with_tied_centroids_is_the_models_argmin(centroids):
    c = np.asarray(centroids, np.float32)
    p = {"scale": 6.0 / 255.0, "zero_point": -128}
    t = int8.int8_thresholds(c, p)
    assert np.all(np.diff(t) >= 0)
    q = np.arange(-128, 128)
    np.testing.assert_array_equal(
        int8.indices_from_int8(q, t), _argmin_lowest(int8.dequantize(q, p), c)
    )


def test_int8_index_rule_rejects_centroids_out_of_order():
    with pytest.raises(ValueError, match="out of order"):
        int8.int8_thresholds(np.array([0.5, 2.0, 1.0]), {"scale": 0.1, "zero_point": 0})


def test_export_of_a_checkpoint_with_collapsed_centroids(trained_workdir, tmp_path):
    """Training can pull centroids onto one value (seen on CIFAR-10): such a run exports, its
    ties and near-ties are reported, and the device never sends the unused tied index."""
    from agilenn_jax.checkpoint import Checkpointer

    wd = str(tmp_path / "wd")
    shutil.copytree(trained_workdir, wd)
    ckpt = Checkpointer(os.path.join(wd, layout.AGILENN_DIR))
    saved, meta = ckpt.restore_subtree(("step", "params", "batch_stats"))
    logits = np.array(saved["params"]["quantizer"]["centroid_logits"])
    logits[2] = logits[1]  # exact tie
    logits[3] = logits[1] + np.float32(2e-6)  # near tie, as in the CIFAR run
    saved["params"]["quantizer"]["centroid_logits"] = logits
    saved["step"] = np.asarray(int(saved["step"]) + 1)
    ckpt.save(int(saved["step"]), saved, meta)
    ckpt.close()

    out = str(tmp_path / "o")
    report = export.export(wd, out, 32, 32, allow_over_budget=True)
    dev = report["device"]
    assert dev["tied_centroids"] == [[1, 2]]
    assert [1, 2, 3] in dev["collapsed_centroids"]
    c = np.asarray(dev["centroids"], np.float32)
    t = np.asarray(dev["int8_thresholds"])
    q = np.arange(-128, 128, dtype=np.int32).astype(np.int8)
    idx = int8.indices_from_int8(q, t)
    assert 2 not in idx  # the tied twin of centroid 1 is never sent
    np.testing.assert_array_equal(
        idx, _argmin_lowest(int8.dequantize(q, report["device"]["quant"]["remote_features"]), c)
    )
    assert report["verification"]["tflm"]["index_agreement"] > 0.95
