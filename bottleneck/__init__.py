"""bottleneck: extract CNN bottleneck features once into an HDF5 cache, then train heads off it in seconds.

Installed as the distribution `bottleneck-derm`: PyPI's `bottleneck` is the pandas accelerator that shares this import
name, and the two cannot share an environment (util/clash.py, README)."""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here

import warnings as _warnings

# pandas probes for its optional accelerator, also imported as "bottleneck", and warns when it finds this package
# instead ("Pandas requires version '1.5.0' or newer of 'bottleneck' (version '0.1.0' currently installed)"); the
# probe is harmless (pandas then does not use it), the warning is noise.
_warnings.filterwarnings("ignore", message=r".*version .* of 'bottleneck'")
