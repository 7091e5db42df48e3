"""The pretrained CNNs: the registry and its one factory (`registry`), the precision they compute in
(`precision`), and the devices they run on (`devices`).

What other packages may use is named here; everything else is private to the package."""


from .devices import Replicas, resolve_devices, visible_devices
from .precision import (
                        BF16_FLAGS,
                        POLICIES,
                        check_precision,
                        compute_policy,
                        cpu_flags,
                        fastest_native,
                        has_gpu,
                        model_precision,
                        resolve_precision,
                        resolve_xla,
)
from .registry import POOLINGS, REGISTRY, create_backbone, get_spec, layer_groups, parse_weights, resolve_size

__all__ = [
    "BF16_FLAGS", "POLICIES", "POOLINGS", "REGISTRY", "Replicas", "check_precision", "compute_policy", "cpu_flags",
    "create_backbone", "fastest_native", "get_spec", "has_gpu", "layer_groups", "model_precision", "parse_weights",
    "resolve_devices", "resolve_precision", "resolve_size", "resolve_xla", "visible_devices",
]
