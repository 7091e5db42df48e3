"""typer parameters derived from declared options (util/options.py): a command says where a table's options go, and
gets them there with the table's flags, types, defaults and help, in the table's order.

    @app.command("train-head")
    @handle_errors
    @with_declared
    def train_head_command(cache: Path = typer.Argument(...), head: dict = declared(HEAD_OPTIONS), ...):
        head = HeadConfig(**head)   # {"hidden": (512, 512), "dropout": 0.5, ...}, read as the library takes them

typer reads a command's parameters with `inspect.signature`, which honours `__signature__`: `with_declared` sets it
to the command's own parameters with each `declared(...)` marker replaced by the options it stands for, and calls the
command with their values gathered back under the marker's name.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, List, Optional

import typer

from ..util import Option, Options


@dataclass(frozen=True)
class Declared:
    """A command parameter standing for declared options: see `declared`."""

    table: Options
    names: tuple[str, ...] = ()
    sweep: bool = False

    def options(self, placed: set[str]) -> list[Option]:
        if self.sweep:  # the command line's sweep options; "file" ones are only read from a grid file
            return [o for o in self.table.sweepable() if o.sweep != "file"]
        if self.names:
            return [self.table[name] for name in self.names]
        return [o for o in self.table if o.name not in placed]


def declared(table: Options, *names: str, sweep: bool = False) -> Any:
    """The default of a command parameter that `with_declared` replaces by options of `table`: every one that no
    other marker of the command names, or just `names` (one, named as the parameter, whose value it then takes).
    sweep=True: the options a sweep varies, as `bottleneck sweep` takes them (comma lists, repetitions; None when
    not given), passed on as the command line gave them."""
    return Declared(table, names, sweep)


def typer_parameter(option: Option, sweep: bool = False) -> inspect.Parameter:
    """One declared option as a typer parameter: as train-head or fine-tune takes it, or as a sweep varies it."""
    if sweep:
        kind = {"repeat": Optional[List[str]], "list": Optional[str]}.get(option.sweep, Optional[option.cli_type])
        default, annotation = typer.Option(None, help=option.sweep_help), kind
    else:
        default = typer.Option(option.cli_default, help=option.help)
        annotation = Optional[option.cli_type] if option.default is None else option.cli_type
    return inspect.Parameter(option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=annotation)


def with_declared(fn):
    """Expand the command's `declared(...)` markers into typer parameters; see the module's docstring."""
    signature = inspect.signature(fn, eval_str=True)
    markers = {p.name: p.default for p in signature.parameters.values() if isinstance(p.default, Declared)}
    placed = {name for m in markers.values() for name in m.names}
    params, groups = [], {}
    for p in signature.parameters.values():
        marker = markers.get(p.name)
        if marker is None:
            params.append(p)
            continue
        options = marker.options(placed)
        if marker.names and [o.name for o in options] != [p.name]:
            raise TypeError(f"{fn.__name__}: a parameter standing for one declared option is named as it; "
                            f"{p.name!r} stands for {marker.names}")
        groups[p.name] = (marker, options)
        params += [typer_parameter(o, marker.sweep) for o in options]
    expanded = signature.replace(parameters=params)  # refuses a name given twice (declared and written by hand)

    @functools.wraps(fn)
    def wrapper(**kwargs):
        for name, (marker, options) in groups.items():
            given = {o.name: kwargs.pop(o.name) for o in options}
            values = given if marker.sweep else {o.name: o.read(given[o.name]) for o in options}
            kwargs[name] = values[name] if marker.names else values
        return fn(**kwargs)

    wrapper.__signature__ = expanded
    wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    wrapper.declared = [(o, marker.sweep) for marker, options in groups.values() for o in options]  # for the tests
    return wrapper
