"""AgileNN in JAX/Flax: XAI-driven agile offloading for extremely weak devices."""

__version__ = "0.1.0"
