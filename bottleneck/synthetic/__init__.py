"""The synthetic dermoscopy-like images of the demo, the tests and the benchmarks: the lesion drawing (`lesions`)
and the dataset written to disk (`demo_data`).

What other packages may use is named here; everything else is private to the package."""


from .demo_data import make_demo_dataset
from .lesions import lesion_photograph

__all__ = [
    "lesion_photograph", "make_demo_dataset",
]
