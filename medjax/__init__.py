"""medjax: JAX/Flax deep learning for medical image analysis.

Importing medjax changes nothing in the process. `configure_cpu()` merges medjax's faster XLA:CPU options into
`XLA_FLAGS` (see `medjax.xla_flags`); the `medjax` command calls it first thing, and a script or notebook calls it
before its first JAX computation.
"""

from medjax.xla_flags import configure_cpu

__version__ = "0.1.0"

__all__ = ["__version__", "configure_cpu"]
