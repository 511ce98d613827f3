"""Orbax behind one small interface: save / latest / restore of a train state plus JSON metadata.

Saves are asynchronous (orbax copies the arrays off the step's buffers, then writes in a
background thread), so training goes on while a checkpoint is written; ``restore``, ``wait`` and
``close`` wait for pending writes. Restoring never deletes anything: an unreadable or mismatched
checkpoint raises ``CheckpointError`` naming the directory and saying which of the two it is, and
the older checkpoints stay where they are. ``restore_subtree`` reads only part of a saved state
(e.g. the variables an inference server needs, not the optimiser state).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE, META = "state", "meta"


class _NoItemMetadataWarning(logging.Filter):
    """Orbax warns that an item directory has no _CHECKPOINT_METADATA when ``restore_subtree``
    reads one item of a manager's step (that file sits at the step level): expected, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoItemMetadataWarning())  # orbax logs through absl


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not match the model in the config."""


def _explain(step: int, directory: str, err: Exception) -> CheckpointError:
    """Tell a structure/shape mismatch (wrong config) from damage (unreadable files)."""
    text = f"{type(err).__name__}: {str(err)[:300]}"
    mismatch = isinstance(err, ValueError) and any(
        s in str(err).lower() for s in ("do not match", "mismatch", "shape", "structure")
    )
    if mismatch:
        what = (
            "does not match the model in the config. Nothing was deleted: fix the config, or "
            "use another workdir"
        )
    else:
        what = (
            "is unreadable (damaged or partly written). Nothing was deleted: move the step "
            "directory aside to resume from an older one, or the workdir to start fresh"
        )
    return CheckpointError(f"checkpoint step {step} in {directory} {what} ({text})")


class Checkpointer:
    """One orbax ``CheckpointManager`` holding items ``state`` (arrays) and ``meta`` (JSON)."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
            ),
            item_names=(STATE, META),
        )

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def require_latest(self, what: str, hint: str) -> int:
        """The latest step; ``CheckpointError`` saying how to make one when there is none."""
        step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no {what} checkpoint in {self.directory}: {hint}")
        return step

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving ``state`` at ``step`` (asynchronously); a saved step is left as it is.

        Training is a pure function of (seed, step), so a saved step already holds this state;
        this lets a periodic save and an end-of-epoch save land on the same step.
        """
        if step == self.latest_step():
            return
        self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
            ),
            force=True,
        )

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self._mgr.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure, shapes and shardings of ``target``."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}
                ),
            )
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise _explain(step, self.directory, e) from e
        return out.state, dict(out.meta)

    def restore_subtree(
        self, keys: tuple[str, ...], step: int | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Only the top-level entries ``keys`` of the saved state, as host numpy arrays.

        Nothing else is read: no optimiser state, no template to build first. The saved
        structure below each key is taken from the checkpoint's own metadata.
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = os.path.join(self.directory, str(step))
        try:
            with ocp.PyTreeCheckpointer() as ckptr:
                saved = ckptr.metadata(os.path.join(path, STATE)).item_metadata.tree
                missing = [k for k in keys if k not in saved]
                if missing:
                    raise ValueError(f"saved state has no {missing} (has {sorted(saved)})")
                item = {k: saved[k] for k in keys}
                restore_args = jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item
                )
                state = ckptr.restore(
                    os.path.join(path, STATE),
                    args=ocp.args.PyTreeRestore(
                        item, restore_args=restore_args, partial_restore=True
                    ),
                )
            with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as jc:
                meta = jc.restore(os.path.join(path, META))
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
            raise _explain(step, self.directory, e) from e
        return state, dict(meta)

    def close(self) -> None:
        self.wait()
        self._mgr.close()
