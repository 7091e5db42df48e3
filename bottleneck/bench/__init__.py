"""`bottleneck bench`: the synthetic data it times (`data`), the timed parts (`parts`) and the printed table
(`report`).

What other packages may use is named here; everything else is private to the package."""


from .parts import PARTS, BenchOptions, format_results, parse_sizes, run_bench

__all__ = [
    "BenchOptions", "PARTS", "format_results", "parse_sizes", "run_bench",
]
