"""The typer app and the one way errors leave it: each command parses options, calls one library function and
echoes its summary; a `BottleneckError` becomes `error: <message>` and exit 1 (usage errors exit 2, from typer),
Ctrl-C exit 130, output into a pipe whose reader has gone (`| head -1`) a quiet exit 141, and any other exception
`error: <type>: <message> (full traceback in <log>)` and exit 1: no traceback ever reaches the terminal."""

from __future__ import annotations

import atexit
import functools
import gc
import os
import select
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import typer

from ..errors import BottleneckError, BottleneckWarning
from ..heads import ClassMap, parse_class_map
from ..util import CLASH_NOTE, DISTRIBUTION, clash_warning, installed_version

# Plain help (click's formatter), not typer's rich panels: at 80 columns those cut long values (a class-map spec, the
# default cache name) with an ellipsis and show a <bool> type beside every flag.
# At exit the interpreter's last collections walk TensorFlow's object graph (2-4 s after a command that imported
# it, measured); frozen, it is left to the process's end. Registered first, so it runs after every other handler.
atexit.register(gc.freeze)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Extract CNN bottlenecks once into an HDF5 cache, then train heads off it in seconds.")


def warn_if_clash() -> None:
    """One `warning:` line when the pandas accelerator of our import name has files where ours are (util/clash.py)."""
    message = clash_warning()
    if message:
        typer.echo(f"warning: {message}", err=True)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {installed_version()}")
        typer.echo(f"note: {CLASH_NOTE}")
        warn_if_clash()
        raise typer.Exit()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's and absl's own start-up and log "
                                      "lines (hidden by default; also BOTTLENECK_VERBOSE=1)."),
         version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help=f"Print the version ({DISTRIBUTION}) and exit.")):
    """Extract CNN bottlenecks once into an HDF5 cache, then train heads off it in seconds."""
    warn_if_clash()
    if verbose:
        # An environment variable rather than a flag passed down: TensorFlow is imported lazily, deep in the
        # library (tfimport.py), and worker processes (Ray) inherit it.
        os.environ["BOTTLENECK_VERBOSE"] = "1"


CLASS_MAP_SYNTAX = "'target=src1,src2;target2=src3'"  # --class-map SPEC, as every command that takes it shows it
CLASS_MAP_HELP = (f"The task, made of the cache's classes: {CLASS_MAP_SYNTAX}, '*' meaning every class "
                  "not named elsewhere; classes named nowhere are dropped and counted. Or a .toml/.csv file of the "
                  "same (needed for class names holding ',' ';' or '='). E.g. 'mel=mel;other=*' (melanoma vs rest).")


QUIET_HELP = "No progress bars or progress lines (the results and any error still print)."


def quiet_option():
    """-q/--quiet, the same on every command that does work that takes a while (`--quiet` in the design)."""
    return typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


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
    """Every warning as one `warning:` line: ours as they are; a library's (Keras, TensorFlow, h5py...) by its first
    line, with its category and package, instead of Python's two lines of file, line number and source."""
    if issubclass(category, BottleneckWarning):
        typer.echo(f"warning: {message}", err=True)
        return
    text = str(message).strip().splitlines()
    typer.echo(f"warning: {text[0] if text else category.__name__} ({category.__name__} from "
               f"{warning_source(filename)})", err=True)


def warning_source(filename: str) -> str:
    """The package a warning came from, by its file: `.../site-packages/keras/src/x.py` -> `keras`."""
    parts = Path(str(filename)).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return Path(parts[parts.index(marker) + 1]).stem
    return Path(str(filename)).name or "Python"


KEEP_LOGS = 50  # newest crash logs kept in the log folder


def log_dirs() -> list[Path]:
    """Where crash logs go, in order of preference: $BOTTLENECK_LOG_DIR, $XDG_STATE_HOME/bottleneck/logs
    (~/.local/state/bottleneck/logs, the XDG place for logs), then the temporary folder."""
    dirs = [Path(os.environ["BOTTLENECK_LOG_DIR"])] if os.environ.get("BOTTLENECK_LOG_DIR") else []
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return dirs + [Path(state) / "bottleneck" / "logs", Path(tempfile.gettempdir()) / f"bottleneck-{uid}" / "logs"]


def write_crash_log(exc: BaseException) -> Path | None:
    """The full traceback of an unexpected error, with the command line, in a new log file; None when no folder
    can take it (this never raises: it runs while reporting another error)."""
    text = (f"command: {' '.join(sys.argv)}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            f"python: {sys.version.split()[0]}\n\n" + "".join(traceback.format_exception(exc)))
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
        except Exception:  # noqa: BLE001 -- an unwritable folder: try the next one
            continue
        try:
            for old in sorted(folder.glob("error-*.log"))[:-KEEP_LOGS]:
                old.unlink()
        except OSError:
            pass
        return path
    return None


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away (`yes | head -1`)


def output_closed() -> bool:
    """Whether stdout or stderr is a pipe whose reader has gone (`bottleneck info CACHE | head -1`): poll reports
    POLLERR on the write end of such a pipe. A BrokenPipeError from anything else (a socket, a worker's pipe) is an
    error like any other."""
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a test runner's buffer, a closed stream
            continue
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & select.POLLERR for _, events in poller.poll(0)):
            return True
    return False


def quiet_exit_on_closed_output() -> None:
    """End quietly, as `cat` or `grep` do, when the reader of our output has gone: exit 141 with nothing printed.

    The rest of the output goes to /dev/null, so neither an error line nor Python's "Exception ignored ...
    BrokenPipeError" at exit reaches the terminal."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    os.close(devnull)
    raise typer.Exit(SIGPIPE_EXIT)


def unexpected(exc: Exception) -> None:
    """One line for an exception the library did not expect, and exit 1; the traceback goes to a log file."""
    lines = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    log = write_crash_log(exc)
    where = f"full traceback in {log}" if log else "the traceback could not be saved: no writable log folder"
    typer.echo(f"error: {message} ({where})", err=True)
    raise typer.Exit(1)


def handle_errors(fn=None, *, interrupted: str = "interrupted; finished batches are kept in the cache"):
    """Map the library's errors to `error: ...` and exit 1; Ctrl-C to `interrupted` and exit 130; the library's
    warnings to one `warning: ...` line each; any other exception to one `error: <type>: ...` line and exit 1, its
    traceback in a log file. typer's own exits and usage errors pass through unchanged."""
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
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer.Exit from `fail`, and typer's own errors (usage: exit 2). typer, not click: typer no
            # longer depends on click, so a clean install has no click to import
        except BrokenPipeError as exc:
            if output_closed():  # `bottleneck info CACHE | head -1`: the reader has what it wanted
                quiet_exit_on_closed_output()
            unexpected(exc)
        except Exception as exc:  # noqa: BLE001 -- the last door: a bug must not print a traceback at the user
            unexpected(exc)

    return wrapper
