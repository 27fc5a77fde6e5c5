"""medjax: JAX/Flax deep learning for medical image analysis."""

from medjax.xla_flags import apply_cpu_defaults as _apply_cpu_defaults

__version__ = "0.1.0"

# Before any JAX backend starts: XLA reads XLA_FLAGS once (see medjax/xla_flags.py; MEDJAX_XLA_CPU_DEFAULTS=0 opts out).
_apply_cpu_defaults()
