"""The one expensive pass: images through the backbone into the cache (`run`), the forward pass both engines
share (`forward`), and the Ray engine (`ray_engine`).

What other packages may use is named here; everything else is private to the package."""


from .ray_engine import require_ray
from .run import ExtractOptions, ExtractSummary, check_engine, extract, make_config, make_forward

__all__ = [
    "ExtractOptions", "ExtractSummary", "check_engine", "extract", "make_config", "make_forward", "require_ray",
]
