"""The `bottleneck` command line: `app` with every command registered (one module per family of commands)."""

from . import cache, compare, heads, models, tools  # noqa: F401  (importing a family registers its commands)
from .app import app

__all__ = ["app"]
