"""What layers represent: saturation, latent extraction, linear probes, receptive fields, FLOPs.

Everything is collected with ptera probes on an unchanged model (no hook, no edit).
"""

from .saturation import Covariance, Saturation, intrinsic_dimensionality, rows_of, saturation

__all__ = [
    "Covariance",
    "Saturation",
    "intrinsic_dimensionality",
    "rows_of",
    "saturation",
]
