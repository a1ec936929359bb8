"""What layers represent: saturation, latent extraction, linear probes, receptive fields, FLOPs.

Everything is collected with ptera probes on an unchanged model (no hook, no edit).
"""

from .latents import extract_latents, load_manifest
from .probes import train_probes
from .saturation import Covariance, Saturation, intrinsic_dimensionality, rows_of, saturation

__all__ = [
    "Covariance",
    "Saturation",
    "extract_latents",
    "intrinsic_dimensionality",
    "load_manifest",
    "rows_of",
    "saturation",
    "train_probes",
]
