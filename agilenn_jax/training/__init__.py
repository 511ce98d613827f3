"""Offline training of AgileNN: reference pre-training, Algorithm 1, joint training with IG.

``experiment.run`` is the entry point; ``stages`` holds the two training stages, ``steps`` the
jitted step functions, ``loop`` the generic fit loop, ``evaluation`` the final IG evaluation.
Nothing outside ``agilenn_jax.training`` and ``launch/`` imports this package: inference, export
and serving read checkpoints through ``agilenn_jax.inference``.
"""
