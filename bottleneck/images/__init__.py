"""From files to pixels: one image decoded by content (`decode`), the one decode -> resize -> batch pipeline
(`pipeline`), the dataset index over class folders or a metadata CSV (`index`), and the stored augmented views
(`views`).

What other packages may use is named here; everything else is private to the package."""


from .decode import load_image
from .fingerprint import (
    NEAR_BITS,
    NEAR_COSINE,
    NO_FINGERPRINT,
    dihedral_variants,
    hamming,
    hamming_min,
    perceptual_hash,
    perceptual_hashes,
)
from .index import DatasetIndex, Entry, build_index, select_shard
from .pipeline import decode_image, fingerprint_of, inference_batches, pad_batch, training_batches
from .views import DIHEDRAL, apply_view, check_views, seeds_for, view_names, view_sampler

__all__ = [
    "NEAR_BITS", "NEAR_COSINE", "NO_FINGERPRINT", "dihedral_variants", "hamming", "hamming_min", "perceptual_hash",
    "perceptual_hashes",
    "DIHEDRAL", "DatasetIndex", "Entry", "apply_view", "build_index", "check_views", "decode_image", "fingerprint_of",
    "inference_batches", "load_image", "pad_batch", "seeds_for", "select_shard", "training_batches", "view_names",
    "view_sampler",
]
