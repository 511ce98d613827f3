"""Train / evaluate AgileNN from an ml_collections config.

    python -m launch.main --config=experiments/configs/quickstart.py --workdir=/tmp/qs \
        [--mode=all|pretrain_reference|train|evaluate] [--config.train.epochs=3 ...]

Rerunning the same command on the same workdir resumes from its last checkpoint.

On Linux the command re-executes itself once with glibc malloc and XLA:CPU settings that make
CPU training 1.5-1.8x faster and leave results unchanged (``agilenn_jax/host_tuning.py``);
``AGILENN_HOST_TUNING=0`` turns that off.

Multi-host (JAX's multi-controller runtime; every process runs the same command):
    TPU pod / SLURM:  ... --distributed          (coordinator and ranks from the environment)
    explicit:         ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
The workdir must be on storage every process sees; process 0 writes results and logs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agilenn_jax import host_tuning  # noqa: E402  (standard library only)

if __name__ == "__main__":  # glibc and XLA:CPU settings need a fresh process: see host_tuning
    host_tuning.reexec_tuned()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from agilenn_jax.checkpoint import CheckpointError  # noqa: E402
from agilenn_jax.input_pipeline import DatasetError  # noqa: E402
from agilenn_jax.training import experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json go.")
_MODE = flags.DEFINE_enum("mode", "all", list(experiment.MODES), "Which stage(s) to run.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Initialise jax.distributed from the cluster environment (TPU, SLURM)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0; implies --distributed."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")
flags.mark_flags_as_required(["config", "workdir"])

# Problems with the user's input: one clear line instead of a traceback. Everything else (XLA
# runtime errors, bugs) keeps its traceback.
USER_ERRORS = (ValueError, DatasetError, CheckpointError, FileNotFoundError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    if host_tuning.applied():
        logging.info(
            "host tuning applied (glibc malloc, XLA:CPU scheduler); XLA_FLAGS=%r",
            os.environ.get("XLA_FLAGS", ""),
        )
    if _COORDINATOR.value:
        if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except USER_ERRORS as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
