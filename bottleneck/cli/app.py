"""The typer app and the one way errors leave it: each command parses options, calls one library function and
echoes its summary; a `BottleneckError` becomes `error: <message>` and exit 1 (usage errors exit 2, from typer),
Ctrl-C exit 130 without a traceback."""

from __future__ import annotations

import functools
import warnings

import typer

from ..class_map import ClassMap, parse_class_map
from ..errors import BottleneckError, BottleneckWarning

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Extract CNN bottlenecks once into an HDF5 cache, then train heads off it in seconds.")


CLASS_MAP_HELP = ("The task, made of the cache's classes: 'target=src1,src2;target2=src3', '*' meaning every class "
                  "not named elsewhere; classes named nowhere are dropped and counted. Or a .toml/.csv file of the "
                  "same. E.g. 'mel=mel;other=*' (melanoma vs rest).")


def class_map_arg(value: str | None) -> ClassMap | None:
    """--class-map SPEC|FILE, parsed (None when not given)."""
    return parse_class_map(value) if value else None


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, BottleneckWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def handle_errors(fn=None, *, interrupted: str = "interrupted; finished batches are kept in the cache"):
    """Map the library's errors to `error: ...` and exit 1; Ctrl-C to `interrupted` and exit 130; the library's
    warnings to one `warning: ...` line each."""
    if fn is None:
        return functools.partial(handle_errors, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", BottleneckWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except BottleneckError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo(interrupted, err=True)
            raise typer.Exit(130)

    return wrapper
