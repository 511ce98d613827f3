"""What a run's workdir holds, and reading it back: the one place that knows these names.

workdir/config.json        the run's config (written before any work)
workdir/reference/<step>/  orbax checkpoints of stage 1 (extractor + reference NN)
workdir/agilenn/<step>/    orbax checkpoints of stage 2 (AgileNN + frozen reference)
workdir/model/<step>/      orbax checkpoints of a baseline's one stage (config.method != agilenn)
workdir/results.json       the final evaluation
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
REFERENCE_DIR = "reference"
AGILENN_DIR = "agilenn"
MODEL_DIR = "model"
TRAIN_FIRST = "train first (--mode=all or --mode=train)"  # when a workdir has no AgileNN stage


def write_json(path: str, obj: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a half-written file behind."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_results(workdir: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(results, None)`` for a finished run, else ``(None, why not)``: unfinished, or
    results.json unreadable / not a JSON object."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return None, "unfinished" if os.path.isdir(workdir) else "unfinished (not started)"
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"results.json unreadable: {e}"
    if not isinstance(results, dict):
        return None, f"results.json unreadable: a JSON {type(results).__name__}, not an object"
    return results, None


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs use (stages, strides, mean/std, ...)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The locked config a run in ``workdir`` was started with."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE}: is it the workdir of a run?")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(raw, dict) or "model" not in raw or "data" not in raw:
        raise ValueError(f"{path} is not an AgileNN config (no model/data sections)")
    config = ml_collections.ConfigDict(_tuples(raw))
    config.lock()
    return config
