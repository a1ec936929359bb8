"""What layers represent: saturation, latent extraction, linear probes, receptive fields, FLOPs.

Everything is collected with ptera probes on an unchanged model (no hook, no edit).
"""

from .flops import computational_info, flops
from .latents import extract_latents, load_manifest
from .probes import train_probes
from .receptive import receptive_field
from .saturation import Covariance, Saturation, intrinsic_dimensionality, rows_of, saturation

__all__ = [
    "Covariance",
    "Saturation",
    "computational_info",
    "extract_latents",
    "flops",
    "intrinsic_dimensionality",
    "load_manifest",
    "receptive_field",
    "rows_of",
    "saturation",
    "train_probes",
]
