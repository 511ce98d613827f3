"""Config helpers every experiment family shares: parsing ``get_config``'s one string argument,
one optimisation stage, resizing both MobileNetV2 stacks together, and setting a field on both
optimisation stages."""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _convert(key: str, text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (a tuple default lists the allowed values)."""
    if isinstance(default, tuple):
        allowed = [str(v) for v in default]
        if text not in allowed:
            raise ValueError(f"config argument {key}={text!r}: allowed values are {allowed}")
        return default[allowed.index(text)]
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"config argument {key}={text!r}: allowed values are true or false")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(
                    f"config argument {key}={text!r}: expected {kind.__name__}"
                ) from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse the text after ``:`` in ``--config=FILE:ARG`` into typed values.

    ``ARG`` is ``key=value,key=value``; each ``defaults`` entry names a key and types it by its
    default value (bool, int, float or str), or, as a tuple, lists the allowed values with the
    default first. A bare word is a shorthand: a bool key (``fast``) means ``fast=true``, and a
    value allowed for exactly one tuple key (``svhn``) means ``dataset=svhn``. Variants of one
    family are then one file with arguments, not copies. Unknown keys and bad values raise a
    ValueError that names the key and the allowed values. Returns a locked ConfigDict.
    """
    values = {k: (v[0] if isinstance(v, tuple) else v) for k, v in defaults.items()}
    seen: set[str] = set()
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, text = (s.strip() for s in item.split("=", 1))
        else:
            key, text = _bare_word(item, defaults), item
            if isinstance(defaults.get(key), bool):
                text = "true"
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; allowed keys are {sorted(defaults)}"
            )
        if key in seen:
            raise ValueError(f"config argument {key!r} given twice in {arg!r}")
        seen.add(key)
        values[key] = _convert(key, text, defaults[key])
    parsed = ml_collections.ConfigDict(values)
    parsed.lock()
    return parsed


def _bare_word(word: str, defaults: dict[str, Any]) -> str:
    """The key a bare word stands for: a bool key of that name, or the one key allowing it."""
    if isinstance(defaults.get(word), bool):
        return word
    keys = [k for k, v in defaults.items() if isinstance(v, tuple) and word in map(str, v)]
    if len(keys) == 1:
        return keys[0]
    if keys:
        raise ValueError(f"config argument {word!r} is ambiguous (a value of {keys}); use key=")
    raise ValueError(
        f"config argument {word!r} is neither a bool key nor a value of one key; "
        f"allowed keys are {sorted(defaults)}"
    )


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
            checkpoint_every_epochs=1,  # also at the last step; each orbax save costs ~0.5 s
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
