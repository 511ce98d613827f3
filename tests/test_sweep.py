"""Sweeps and reports: grid helpers, workdir names, commands that config_flags parses back
exactly, the runner (skip / resume / record a failure and go on) with a stand-in interpreter,
the report on synthetic and broken workdirs, and one real sweep of the smoke config end to end:
a half-finished point resumes, finished points are not rerun."""

import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

from agilenn_jax import layout, report, sweep
from tests.conftest import ROOT

SMOKE = "experiments/configs/smoke.py"
SMOKE_SWEEP = f"{SMOKE}:sweep=test"


def test_product_zip_and_seeds():
    grid = sweep.product(**{"loss.rho": (0.7, 0.9), "model.k": (-1,), "xai.rule": ("a", "b")})
    assert grid == [
        {"loss.rho": 0.7, "model.k": -1, "xai.rule": "a"},
        {"loss.rho": 0.7, "model.k": -1, "xai.rule": "b"},
        {"loss.rho": 0.9, "model.k": -1, "xai.rule": "a"},
        {"loss.rho": 0.9, "model.k": -1, "xai.rule": "b"},
    ]
    assert sweep.zip_(**{"a": (1, 2), "b": ("x", "y")}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert sweep.with_seeds([{"a": 1}, {"a": 2}], range(2)) == [
        {"a": 1, "seed": 0},
        {"a": 1, "seed": 1},
        {"a": 2, "seed": 0},
        {"a": 2, "seed": 1},
    ]
    with pytest.raises(ValueError, match="equal length"):
        sweep.zip_(a=(1, 2), b=(1,))
    with pytest.raises(ValueError, match="'a' needs a non-empty list"):
        sweep.product(a=())
    with pytest.raises(ValueError, match="'a' needs a non-empty list"):
        sweep.product(a="abc")  # a string is not a list of values
    with pytest.raises(ValueError, match="already sets seed"):
        sweep.with_seeds([{"seed": 3}], [0])


def test_point_name_is_sorted_safe_and_stable():
    point = {"seed": 1, "model.split_ratio": 0.2, "loss.rho": 0.8}
    assert sweep.point_name(point) == "loss.rho=0.8,model.split_ratio=0.2,seed=1"
    odd = {"data.path": "/a b/c:d.tar.gz", "local_bn": False, "model.extractor_strides": (1, 2)}
    name = sweep.point_name(odd)
    assert name == "data.path=_a_b_c_d.tar.gz,local_bn=false,model.extractor_strides=1x2"
    assert sweep.point_name({}) == "base"
    long_a = {"model.remote_stages": ((1, 16, 1, 1),) * 12, "seed": 0}
    long_b = {"model.remote_stages": ((1, 16, 1, 1),) * 13, "seed": 0}
    a, b = sweep.point_name(long_a), sweep.point_name(long_b)
    assert len(a) <= sweep.MAX_NAME and a != b and a == sweep.point_name(dict(long_a))
    for n in (a, b, name):
        assert "/" not in n and " " not in n and ":" not in n


def _parse_like_launch_main(argv):
    """argv[3:] of a ``python -m launch.main ...`` command, parsed by the real config_flags."""
    args = argv[3:]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=["prog", *args]
    )
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(["prog", *args])
    return fv


def test_commands_round_trip_through_config_flags(tmp_path):
    overrides = {
        "loss.rho": 0.7,
        "model.temperature": 1e-3,
        "model.k": -1,
        "seed": 12,
        "model.local_bn": False,
        "preselect.enabled": True,
        "xai.rule": "riemann",
        "data.path": str(tmp_path / "with space" / "d,ata.tar.gz"),
        "model.extractor_strides": (2, 1),
        "model.remote_stages": ((1, 8, 1, 1), (6, 16, 2, 2)),
        "data.mean": (0.5,),
    }
    root = str(tmp_path / "root")
    line = sweep.shell_lines(SMOKE_SWEEP, root, [(sweep.point_name(overrides), overrides)])[0]
    argv = shlex.split(line)  # what a shell running the emitted line passes on
    assert argv[:3] == ["python3", "-m", "launch.main"]
    fv = _parse_like_launch_main(argv)
    assert fv.workdir == os.path.join(root, sweep.point_name(overrides))
    for key, value in overrides.items():
        node = fv.config
        for part in key.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), key
    untouched = _parse_like_launch_main(argv[:5]).config  # no overrides: the plain config
    assert untouched.loss.rho == 0.8 and untouched.model.k == 2


def test_points_are_checked_against_the_config(tmp_path):
    def config_file(points):
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.py"
        path.write_text(
            "from experiments.configs import smoke\n"
            "get_config = smoke.get_config\n"
            f"def get_sweep(arg=None):\n    return {points!r}\n"
        )
        return str(path)

    with pytest.raises(ValueError, match="'loss.rhoo' is not a key of the config"):
        sweep.load_points(config_file([{"loss.rhoo": 0.5}]))
    with pytest.raises(ValueError, match=r"model.k=0.5: .*cannot be casted"):
        sweep.load_points(config_file([{"model.k": 0.5}]))
    with pytest.raises(ValueError, match="model.local_bn=1 does not fit True"):
        sweep.load_points(config_file([{"model.local_bn": 1}]))
    with pytest.raises(ValueError, match="'model' is a section"):
        sweep.load_points(config_file([{"model": 1}]))
    with pytest.raises(ValueError, match="share the name"):
        sweep.load_points(config_file([{"data.path": "a/b"}, {"data.path": "a:b"}]))
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweep.load_points("experiments/configs/common.py")
    with pytest.raises(ValueError, match="no sweep point name contains all of"):
        sweep.select(sweep.load_points(SMOKE_SWEEP), ["loss.rho=0.5"])
    one = sweep.select(sweep.load_points(SMOKE_SWEEP), "loss.rho=0.9,seed=1".split(","))
    assert one == [("loss.rho=0.9,seed=1", {"loss.rho": 0.9, "seed": 1})]


# A stand-in for the Python interpreter: "trains" a point instantly, or fails for rho=0.5.
FAKE_PYTHON = """\
#!{python}
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
if args.get("--config.loss.rho") == "0.5":
    print("step 1", flush=True)
    sys.exit("boom: rho=0.5 diverged")
os.makedirs(args["--workdir"], exist_ok=True)
seed = int(args.get("--config.seed", 0))
with open(os.path.join(args["--workdir"], "results.json"), "w") as f:
    json.dump({{"test_accuracy": 0.5 + seed / 10, "achieved_skewness": 0.8}}, f)
"""


def _fake_python(tmp_path):
    path = tmp_path / "fakepython"
    path.write_text(FAKE_PYTHON.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def test_runner_skips_resumes_and_records_failures(tmp_path):
    root = str(tmp_path / "root")
    cfg = tmp_path / "grid.py"
    cfg.write_text(
        "from agilenn_jax import sweep\n"
        "from experiments.configs import smoke\n"
        "get_config = smoke.get_config\n"
        "def get_sweep(arg=None):\n"
        "    return sweep.with_seeds(sweep.product(**{'loss.rho': (0.5, 0.7, 0.9)}), (0, 1))\n"
    )
    points = sweep.load_points(str(cfg))
    done = os.path.join(root, "loss.rho=0.9,seed=0")
    corrupt = os.path.join(root, "loss.rho=0.9,seed=1")
    for wd, text in ((done, '{"test_accuracy": 0.1}'), (corrupt, '{"test_acc')):
        os.makedirs(wd)
        with open(os.path.join(wd, "results.json"), "w") as f:
            f.write(text)
    old = os.stat(os.path.join(done, "results.json")).st_mtime_ns
    lines = []
    fake = _fake_python(tmp_path)
    outcome = sweep.run(str(cfg), root, points, parallel=2, python=fake, out=lines.append)
    assert sorted(outcome["failed"]) == ["loss.rho=0.5,seed=0", "loss.rho=0.5,seed=1"]
    assert outcome["skipped"] == ["loss.rho=0.9,seed=0"]
    assert len(outcome["finished"]) == 3  # 0.7 x 2 and the corrupt one, rerun
    assert os.stat(os.path.join(done, "results.json")).st_mtime_ns == old
    with open(os.path.join(corrupt, "results.json.unreadable")) as f:
        assert f.read() == '{"test_acc'  # kept aside, not lost
    assert sweep.read_results(corrupt) == {"test_accuracy": 0.6, "achieved_skewness": 0.8}
    with open(os.path.join(root, sweep.STATUS_FILE)) as f:
        status = json.load(f)["points"]
    failed = status["loss.rho=0.5,seed=1"]
    assert failed["state"] == "failed" and failed["returncode"] == 1
    assert failed["stderr_tail"][-2:] == ["step 1", "boom: rho=0.5 diverged"]
    assert {s["state"] for n, s in status.items() if "0.5" not in n} == {"finished"}
    with open(os.path.join(root, "loss.rho=0.5,seed=1.log")) as f:
        assert "boom" in f.read()
    assert any("FAILED (exit code 1)" in line and "boom" in line for line in lines)
    assert any("finished before, skipped" in line for line in lines)
    with open(os.path.join(root, sweep.SWEEP_FILE)) as f:
        assert len(json.load(f)["points"]) == 6
    with open(report.build(root)["report"]) as f:
        md = f.read()
    assert "point loss.rho=0.5,seed=0: unfinished, failed (exit code 1): boom: rho=0.5" in md
    # Another config into the same root is refused; nothing there is touched.
    with pytest.raises(ValueError, match="already holds a sweep of"):
        sweep.run(SMOKE_SWEEP, root, sweep.load_points(SMOKE_SWEEP))


def _write_point(root, name, overrides, results, sweep_points):
    sweep_points[name] = overrides
    wd = os.path.join(root, name)
    os.makedirs(wd, exist_ok=True)
    if results is not None:
        with open(os.path.join(wd, "results.json"), "w") as f:
            f.write(results if isinstance(results, str) else json.dumps(results))


def _metrics(acc, skew):
    return {
        "test_accuracy": acc,
        "remote_only_accuracy": acc - 0.01,
        "local_only_accuracy": 0.2,
        "achieved_skewness": skew,
        "disorder_violation_rate": 0.1,
        "alpha": 0.4,
        "remote_entropy_bits_per_sample": 4000.0 + 100 * acc,
        "k": 2,
    }


def test_report_means_stds_problems_and_plots(tmp_path):
    root = str(tmp_path)
    points = {}
    accs = {}
    for rho in (0.7, 0.8):
        for ratio in (0.125, 0.25):
            for seed in range(3):
                o = {"loss.rho": rho, "model.split_ratio": ratio, "model.k": -1, "seed": seed}
                acc = 0.9 + rho / 10 - ratio / 10 + seed / 100
                accs.setdefault((rho, ratio), []).append(acc)
                _write_point(root, sweep.point_name(o), o, _metrics(acc, rho), points)
    unfinished = {"loss.rho": 0.9, "model.split_ratio": 0.25, "model.k": -1, "seed": 0}
    corrupt = dict(unfinished, seed=1)
    _write_point(root, sweep.point_name(unfinished), unfinished, None, points)
    _write_point(root, sweep.point_name(corrupt), corrupt, '{"test_accuracy": 0.9', points)
    not_started = dict(unfinished, seed=2)
    points[sweep.point_name(not_started)] = not_started
    layout.write_json(os.path.join(root, "sweep.json"), {"config": "x.py:y", "points": points})

    built = report.build(root)
    with open(built["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points) == 15
    assert sorted(r["status"] for r in rows if r["status"] != "finished") == [
        "bad",
        "unfinished",
        "unfinished",
    ]
    with open(built["report"]) as f:
        md = f.read()
    assert f"point {sweep.point_name(unfinished)}: unfinished" in md
    assert f"point {sweep.point_name(not_started)}: unfinished (not started)" in md
    assert f"point {sweep.point_name(corrupt)}: results.json unreadable: " in md
    assert "Same in every row: `model.k=-1`" in md
    values = accs[(0.8, 0.125)]
    expected = f"| 0.8 | 0.125 | 3 | {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert expected in md
    assert "| loss.rho | model.split_ratio | n | test_accuracy |" in md
    names = sorted(os.path.basename(p) for p in built["plots"])
    assert names == [
        "accuracy_vs_entropy.png",
        "accuracy_vs_loss.rho.png",
        "skewness_vs_loss.rho.png",
    ]
    for p in built["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_categorical_axis_and_recovered_overrides(tmp_path):
    root = str(tmp_path)
    for i, method in enumerate(("ig", "saliency")):
        for seed in (0, 1):
            wd = os.path.join(root, f"run{i}{seed}")
            os.makedirs(wd)
            config = {"xai": {"method": method}, "seed": seed, "model": {"k": 2}}
            layout.write_json(os.path.join(wd, "config.json"), config)
            layout.write_json(os.path.join(wd, "results.json"), _metrics(0.9 + i / 10, 0.8))
    os.makedirs(os.path.join(root, "run99"))  # no config: not a point
    os.makedirs(os.path.join(root, "broken"))
    with open(os.path.join(root, "broken", "config.json"), "w") as f:
        f.write("{")
    built = report.build(root)
    with open(built["report"]) as f:
        md = f.read()
    assert "| saliency | 2 | 1.0000 ± 0.0000 |" in md
    assert "point broken: config.json unreadable" in md
    assert "accuracy_vs_xai.method.png" in [os.path.basename(p) for p in built["plots"]]
    with pytest.raises(ValueError, match="nothing to report"):
        report.build(str(tmp_path / "run99"))


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_emit_and_dry_run_write_the_commands(tmp_path):
    root, emit = str(tmp_path / "root"), str(tmp_path / "cmds.txt")
    r = _cli("launch.sweep", f"--config={SMOKE_SWEEP}", f"--root={root}", "--dry_run")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4 and not os.path.exists(root)
    r = _cli("launch.sweep", f"--config={SMOKE_SWEEP}", f"--root={root}", f"--emit={emit}")
    assert r.returncode == 0, r.stderr
    with open(emit) as f:
        lines = f.read().splitlines()
    assert [shlex.split(line)[4] for line in lines] == [
        f"--workdir={root}/loss.rho={rho},seed={s}" for rho in (0.8, 0.9) for s in (0, 1)
    ]
    assert os.path.exists(os.path.join(root, "sweep.json"))  # the report's overrides
    r = _cli("launch.sweep", f"--config={SMOKE}:sweep=nope", f"--root={root}", "--dry_run")
    assert r.returncode == 1 and "sweep='nope': allowed values are ['', 'test']" in r.stderr


@pytest.mark.slow  # ~75-90 s: keeps the default suite under 6 min on 2 cores
def test_sweep_end_to_end_resumes_and_never_reruns(tmp_path):
    """4 smoke points: one finished and one half-finished before the sweep starts."""
    t0 = time.time()
    root = str(tmp_path / "root")
    points = dict(sweep.load_points(SMOKE_SWEEP))
    finished, half = "loss.rho=0.8,seed=0", "loss.rho=0.8,seed=1"
    for name, extra in ((finished, []), (half, ["--config.train.stop_after_steps=3"])):
        wd = os.path.join(root, name)
        argv = sweep.main_command(SMOKE_SWEEP, wd, points[name], python=sys.executable)
        r = subprocess.run(argv + extra, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    assert sweep.read_results(os.path.join(root, half)) is None
    results_file = os.path.join(root, finished, "results.json")
    before = os.stat(results_file).st_mtime_ns
    t1 = time.time()

    r = _cli("launch.sweep", f"--config={SMOKE_SWEEP}", f"--root={root}", "--parallel=2")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"{finished}: finished before, skipped" in r.stdout
    assert f"{half}: resuming" in r.stdout
    assert r.stdout.count(": starting") == 2
    with open(os.path.join(root, f"{half}.log")) as f:
        log = f.read()
    assert "[reference] resumed from step 14" in log and "[agilenn] resumed from step 3" in log
    assert sorted(os.listdir(os.path.join(root, half, "agilenn"))) == ["14", "3"]

    r = _cli("launch.sweep", f"--config={SMOKE_SWEEP}", f"--root={root}")  # all done: no run
    assert r.returncode == 0 and r.stdout.count("finished before, skipped") == 4, r.stdout
    assert os.stat(results_file).st_mtime_ns == before
    for name in points:
        assert sweep.read_results(os.path.join(root, name)) is not None
        if name != finished:  # each ran exactly once under the sweep
            with open(os.path.join(root, f"{name}.log")) as f:
                assert f.read().count("=== ") == 1, name
    with open(os.path.join(root, sweep.STATUS_FILE)) as f:
        assert {s["state"] for s in json.load(f)["points"].values()} == {"finished"}
    with open(os.path.join(root, "results.csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(os.path.join(root, "report.md")) as f:
        md = f.read()
    assert "| loss.rho | n | test_accuracy |" in md and "| 0.9 | 2 | " in md and " ± " in md
    for png in ("accuracy_vs_loss.rho.png", "skewness_vs_loss.rho.png", "accuracy_vs_entropy.png"):
        assert os.path.getsize(os.path.join(root, png)) > 1000
    print(f"end-to-end sweep test: {time.time() - t0:.0f} s ({t1 - t0:.0f} s before the sweep)")


def test_report_cli(tmp_path):
    r = _cli("launch.report", f"--root={tmp_path}")
    assert r.returncode == 1 and "nothing to report" in r.stderr
    wd = tmp_path / "a"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"seed": 0}))
    r = _cli("launch.report", f"--root={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "0 of 1 point(s) finished" in r.stdout and "point a: unfinished" in r.stdout
    assert "- point a: unfinished" in (tmp_path / "report.md").read_text()
