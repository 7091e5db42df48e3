"""bottleneck: extract CNN bottleneck features once into an HDF5 cache, then train heads off it in seconds."""

__version__ = "0.1.0"
