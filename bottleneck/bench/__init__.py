"""`bottleneck bench`: the synthetic data it times (`data`), the timed parts (`parts`; the writer in `write_rate`,
the stand-in-backbone ceiling in `pipeline_ceiling` with `standin` and `cores`, the decoders in `decoders`, the
extraction against its own forward pass in `extraction`), the limits a rate is compared with (`ceilings`) and the
printed table (`report`).

What other packages may use is named here; everything else is private to the package."""


from .data import BenchOptions, parse_sizes
from .parts import PARTS, QUICK_PARTS, choose_parts, run_bench
from .report import format_results

__all__ = [
    "BenchOptions", "PARTS", "QUICK_PARTS", "choose_parts", "format_results", "parse_sizes", "run_bench",
]
