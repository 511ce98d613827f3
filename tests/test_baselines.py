"""The paper's baselines as first-class methods: each trains (launch's experiment.run), exports
through jax2tf -> int8 TFLite -> TFLite Micro with the budget report, and runs through the
socket runtime; launch.compare reads what they write."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agilenn_jax import compare, layout, losses
from agilenn_jax.deploy import cost, export
from agilenn_jax.models import build_model
from agilenn_jax.models.mobilenet import MobileNetV2Stack, block_specs
from agilenn_jax.serving import client, evaluation, server
from agilenn_jax.training import experiment
from experiments.configs import compare as compare_configs
from tests.helpers import serving, smoke_baseline_config

BASELINES = ("edge_only", "local_only", "deepcod", "spinn")


def test_rate_bits_is_the_entropy_of_the_soft_histogram():
    eye = jnp.eye(8)
    uniform = jnp.tile(eye[None, None, :, None, :], (1, 1, 8, 3, 1))  # [1, 1, 8, 3, 8]
    assert float(losses.rate_bits(uniform)) == pytest.approx(3.0, abs=1e-5)
    constant = jnp.tile(eye[0], (2, 4, 4, 3, 1))
    assert float(losses.rate_bits(constant)) == pytest.approx(0.0, abs=1e-5)
    soft = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 4, 4, 3, 8)))
    g = jax.grad(lambda p: losses.rate_bits(p))(soft)
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("split", [1, 2, 3])
def test_split_halves_hold_exactly_the_whole_stacks_parameters(split):
    stages = ((1, 8, 1, 1), (2, 16, 2, 2), (2, 24, 1, 2))
    x = jnp.zeros((1, 8, 8, 4))

    def count(module, inp):
        v = module.init(jax.random.key(0), inp)
        return sum(np.size(a) for a in jax.tree.leaves(v["params"])), module.apply(v, inp)

    whole, _ = count(MobileNetV2Stack(10, stages=stages, head_channels=32), x)
    n_front, mid = count(MobileNetV2Stack(10, stages=stages, blocks=(0, split), head=False), x)
    n_back, logits = count(
        MobileNetV2Stack(10, stages=stages, head_channels=32, blocks=(split, -1)), mid
    )
    assert n_front + n_back == whole
    chex.assert_shape(logits, (1, 10))
    assert len(block_specs(stages, 1.0)) == 4


@pytest.mark.parametrize("method", BASELINES)
def test_model_outputs_and_device_halves(method):
    c = smoke_baseline_config(method)
    model = build_model(c)
    x = jnp.zeros((2, 12, 12, 3))
    v = model.init(jax.random.key(0), x)
    out = model.apply(v, x)
    chex.assert_shape(out["logits"], (2, 10))
    if method in ("deepcod", "spinn"):
        dev = model.apply(v, x, method="device")
        assert dev["indices"].dtype == jnp.int32
        served = model.apply(v, dev["indices"], method="serve")
        np.testing.assert_allclose(served, out["logits"], rtol=1e-5, atol=1e-5)
        assert ("local_logits" in dev) == (method == "spinn")
    if method == "edge_only":
        img = np.full((2, 12, 12, 3), 128, np.uint8)
        chex.assert_shape(model.apply(v, img, method="serve"), (2, 10))


def test_bad_baseline_values_are_clear_errors():
    with pytest.raises(ValueError, match="split_block"):
        experiment.validate_config(smoke_baseline_config("spinn", **{"baseline.split_block": 2}))
    with pytest.raises(ValueError, match="image_codec"):
        experiment.validate_config(
            smoke_baseline_config("edge_only", **{"baseline.image_codec": "gif"})
        )
    with pytest.raises(ValueError, match="rate_weight"):
        experiment.validate_config(smoke_baseline_config("deepcod", **{"baseline.rate_weight": -1}))
    with pytest.raises(ValueError, match="no reference stage"):
        experiment.run(smoke_baseline_config("deepcod"), "/tmp/unused", "pretrain_reference")
    # AgileNN-only objective options are refused, not silently ignored
    for key, value in (
        ("loss.codebook_weight", 1.0),
        ("loss.alive_weight", 1.0),
        ("loss.ceiling_weight", 1.0),
        ("model.channel_gain_max", 8.0),
    ):
        with pytest.raises(ValueError, match=rf"{key}={value}: AgileNN-only .* method=deepcod"):
            experiment.validate_config(smoke_baseline_config("deepcod", **{key: value}))


def test_compare_configs_are_the_agilenn_config_plus_the_method_edits():
    ag = compare_configs.get_config("method=agilenn,dataset=digits")
    assert ag.method == "agilenn" and ag.reference_train.epochs > 0
    for method in BASELINES:
        c = compare_configs.get_config(f"method={method},dataset=digits")
        experiment.validate_config(c)
        assert c.method == method and c.reference_train.epochs == 0
        assert c.train.to_dict() == ag.train.to_dict()  # same optimiser and epochs
        assert c.data.to_dict() == ag.data.to_dict()
    for dataset in ("cifar10", "cifar100", "svhn", "tiny_imagenet"):
        for method in ("agilenn", *BASELINES):
            c = compare_configs.get_config(f"method={method},dataset={dataset},scale=paper")
            experiment.validate_config(c)
            assert c.train.epochs == 200 and c.data.image_size == 96
    paper = compare_configs.get_config("method=local_only,dataset=svhn,scale=paper")
    assert paper.data.image_size == 96 and paper.baseline.stem_stride == 2
    with pytest.raises(ValueError, match="sweep=rate needs"):
        compare_configs.get_sweep("method=edge_only,sweep=rate")
    assert len(compare_configs.get_sweep("method=deepcod,sweep=rate,seeds=2")) == 8


@pytest.fixture(scope="module", params=BASELINES)
def deployed(request, tmp_path_factory):
    """(method, workdir, export report, export dir): trained 1 smoke epoch, exported."""
    method = request.param
    wd = str(tmp_path_factory.mktemp(method))
    results = experiment.run(smoke_baseline_config(method), wd, "all")
    assert results["method"] == method
    out = os.path.join(wd, "export")
    report = export.export(wd, out, num_calibration=32, num_verify=24)
    return method, wd, report, out


def test_baseline_trains_exports_and_runs_through_the_socket(deployed, tmp_path):
    method, wd, report, out = deployed
    saved, why = layout.read_results(wd)
    assert why is None and saved["method"] == method and 0.0 <= saved["test_accuracy"] <= 1.0
    if method == "edge_only":
        formats = report["image_formats"]
        assert {"raw", "png", "lzw", "jpeg_q90", "webp_q90"} <= set(formats)
        lossless = {formats[f]["accuracy"] for f in ("raw", "png", "lzw")}
        assert len(lossless) == 1  # the same decoded image, so the same predictions
        assert formats["png"]["bytes_per_sample"] < formats["raw"]["bytes_per_sample"]
    else:
        assert report["ops_all_tflm_builtins"] and report["budget"]["arena_bytes"] > 0
        v = report["verification"]
        assert 0.0 <= v["accuracy_int8"] <= 1.0
        if method in ("deepcod", "spinn"):
            assert v["index_agreement"] > 0.9  # int8 device vs float model
        assert sum(r.get("macs", 0) for r in report["layers"]) > 0
    device = client.Device(out, port=0)
    images, labels = evaluation_images(wd, 12)
    if method == "local_only":
        r = evaluation.run_baseline_device(device, wd, images, labels)
    else:
        codec_, meta = server.load_codec(out)
        remote = server.RemoteModel(wd, max_batch=4)
        with serving(server.Server(remote, codec_, port=0)) as port:
            device = client.Device(out, port=port)
            r = evaluation.run_baseline_device(device, wd, images, labels)
    assert r["fallbacks"] == 0 and r["same_predictions_as_offline"] == 1.0
    if method == "local_only":
        assert r["offload_fraction"] == 0.0 and r["bytes_per_sample"] == 0.0
    elif method in ("edge_only", "deepcod"):
        assert r["offload_fraction"] == 1.0 and r["bytes_per_sample"] > 0
    summary = evaluation.method_summary(device, {**r, "workdir": wd}, layout.read_config(wd))
    path = tmp_path / "method_summary.json"
    path.write_text(json.dumps(summary))
    run, problem = compare.read_summary(str(path))
    assert problem is None and run.method == method


def evaluation_images(wd, n):
    from agilenn_jax import inference

    return inference.held_out_images(layout.read_config(wd), n)


def test_over_budget_device_is_refused_or_recorded_loudly(deployed, tmp_path, monkeypatch):
    method, wd, _, _ = deployed
    if method != "local_only":
        pytest.skip("one method suffices (the check is shared)")
    monkeypatch.setattr(cost, "FLASH_BUDGET", 1024)
    with pytest.raises(export.ExportError, match="exceeds the STM32F746 flash budget"):
        export.export(wd, str(tmp_path / "x"), num_calibration=8, num_verify=8)
    assert not os.path.exists(tmp_path / "x")  # nothing written
    report = export.export(
        wd, str(tmp_path / "y"), num_calibration=8, num_verify=8, allow_over_budget=True
    )
    assert report["over_budget"] == ["flash"]
    assert "DOES NOT FIT: flash" in export.format_report(report)


def test_centroids_out_of_order_are_relabelled_without_changing_outputs():
    """A strong rate term let DeepCOD's centroids cross (seen on digits at rate 0.1); loading a
    run sorts them, so the int8 index rule applies and every output stays the same."""
    from agilenn_jax import inference
    from agilenn_jax.deploy import int8

    c = smoke_baseline_config("deepcod")
    model = build_model(c)
    x = jax.random.uniform(jax.random.key(1), (4, 12, 12, 3), minval=-2, maxval=2)
    v = model.init(jax.random.key(0), x)
    logits = np.asarray(v["params"]["quantizer"]["centroid_logits"])
    crossed = logits[[0, 1, 3, 2, 4, 5, 6, 7]]
    v = {**v, "params": {**v["params"], "quantizer": {"centroid_logits": crossed}}}
    fixed = inference.ascending_centroids(v)
    centroids = np.asarray(model.apply(fixed, method="centroids"))
    assert np.all(np.diff(centroids) > 0)
    int8.int8_thresholds(centroids, {"scale": 0.05, "zero_point": -128})  # no longer raises
    np.testing.assert_allclose(
        model.apply(fixed, x)["logits"], model.apply(v, x)["logits"], rtol=1e-6, atol=1e-6
    )
    assert inference.ascending_centroids(fixed) is fixed
