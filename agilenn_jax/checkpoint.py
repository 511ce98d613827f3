"""Orbax behind one small interface: save / latest / restore of a train state plus JSON metadata.

Restoring never deletes anything: an unreadable checkpoint raises ``CheckpointError`` naming the
directory so the user can move it aside, and the older checkpoints stay where they are.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model in the config."""


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``state`` at ``step``; a step that is already saved is left as it is.

        Training is a pure function of (seed, step), so a saved step already holds this state;
        this lets a periodic save and an end-of-epoch save land on the same step.
        """
        if step == self.latest_step():
            return
        self._mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._mgr.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure, shapes and shardings of ``target``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is unreadable or does not match the "
                f"model in the config ({type(e).__name__}: {str(e)[:300]}). Nothing was deleted: "
                "fix the config, or move the directory aside to start fresh."
            ) from None
        return out.state, dict(out.meta)

    def close(self) -> None:
        self._mgr.close()
