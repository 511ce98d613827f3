"""Config helpers every experiment family shares: one optimisation stage, resizing both
MobileNetV2 stacks together, and setting a field on both optimisation stages."""

import ml_collections


def sgd(epochs: int, batch_size: int = 128, lr: float = 0.1) -> ml_collections.ConfigDict:
    """One optimisation stage: SGD + momentum, cosine schedule, decoupled weight decay."""
    return ml_collections.ConfigDict(
        dict(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=0.9,
            weight_decay=5e-4,
            warmup_epochs=0,
            log_every_steps=50,
            checkpoint_every_steps=500,
            eval_every_epochs=10,
            stop_after_steps=-1,  # >0: end this invocation after N steps (time-sliced jobs)
            max_to_keep=2,
        )
    )


def set_networks(
    c: ml_collections.ConfigDict,
    stages: tuple,
    head_channels: int,
    remote_width: float,
    reference_width: float,
) -> None:
    """Resize the remote and the reference MobileNetV2 stacks together (CPU-sized variants)."""
    for part, width in (("remote", remote_width), ("reference", reference_width)):
        c.model[f"{part}_stages"] = stages
        c.model[f"{part}_head_channels"] = head_channels
        c.model[f"{part}_width"] = width


def set_optimisation(c: ml_collections.ConfigDict, **fields) -> None:
    """Set the same fields on both optimisation stages (reference pre-training and AgileNN)."""
    for stage in (c.reference_train, c.train):
        for key, value in fields.items():
            stage[key] = value
