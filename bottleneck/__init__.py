"""bottleneck: extract CNN bottleneck features once into an HDF5 cache, then train heads off it in seconds."""

__version__ = "0.1.0"

import warnings as _warnings

# pandas probes for an unrelated optional accelerator that is also called "bottleneck" and warns when it
# finds this package instead; the probe is harmless (pandas then does not use it), the warning is noise.
_warnings.filterwarnings("ignore", message=r".*version .* of 'bottleneck'")
