"""Options declared once: the name, type, default, help and check of each option, and whether a sweep may vary it.
The command line's parameters, the library's validation, the rerun command a run records, the sweep's grid keys
and the docs test are all derived from these declarations, so a default or a flag written twice cannot drift.

In the spirit of scikit-learn's `_parameter_constraints`: a configuration dataclass (HeadConfig, FineTuneOptions)
keeps the defaults, a table of `Option`s beside it says everything else about its fields, and `Options` reads each
default from the dataclass (one source). Nothing here imports typer (util is a low layer): cli/params.py turns a
table into typer parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import InputError

# How `bottleneck sweep` takes the values of an option it may vary (its order is the order of the grid keys):
# "repeat": one value per repetition of the option (--hidden 512,512 --hidden 1024: the commas are the value's own);
# "list": comma-separated values in one option (--lr 1e-3,3e-4); "one": one value for every configuration on the
# command line, several in a grid file; "file": in a grid file only.
SWEEP_MODES = ("repeat", "list", "one", "file")


@dataclass(frozen=True)
class Option:
    """One option of a configuration dataclass, named as its field (`decay_rate` is `--decay-rate`)."""

    name: str
    help: str
    type: type | None = None  # on the command line; None: the default's type (str for a default shown by `show`)
    check: Callable[[Any], str | None] | None = None  # the problem with a value ("should be positive"), or None
    parse: Callable[[Any], Any] | None = None  # a command-line or grid value -> the library's value; None: `type`
    show: Callable[[Any], str] = str  # the library's value -> command-line text (rerun commands, --help's default)
    sweep: str | None = None  # how a sweep varies it (SWEEP_MODES); None: fixed for a whole sweep
    sweep_help: str = ""  # the sweep option's help
    default: Any = None  # read from the configuration dataclass by `Options`, never written here

    def __post_init__(self):
        if self.sweep not in (None, *SWEEP_MODES):
            raise ValueError(f"option {self.name!r}: sweep should be one of {', '.join(SWEEP_MODES)} or None; "
                             f"received {self.sweep!r}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def cli_type(self) -> type:
        if self.type is not None:
            return self.type
        if self.default is None:
            raise ValueError(f"option {self.name!r} has no default to take its type from; declare its type")
        return type(self.default)

    @property
    def cli_default(self):
        """The default as the command line takes it (the text of a value that is not a string, e.g. "512,512")."""
        if self.default is None or self.cli_type is not str or isinstance(self.default, str):
            return self.default
        return self.show(self.default)

    def read(self, value):
        """A value from the command line or a grid file as the library takes it; None stays None (not given)."""
        if value is None:
            return None
        return (self.parse or self.cli_type)(value)

    def argv(self, value) -> list[str]:
        """The value spelled as command-line arguments: `--flag TEXT`, `--flag`/`--no-flag`; [] for None."""
        if value is None:
            return []
        if self.cli_type is bool:
            return [self.flag if value else f"--no-{self.flag[2:]}"]
        return [self.flag, self.show(value)]

    def validate(self, value) -> None:
        """Refuse a bad value in one line naming the flag, the problem and the value."""
        problem = self.check(value) if self.check else None
        if problem:
            shown = repr(value) if isinstance(value, str) else value
            raise InputError(f"{self.flag} {problem}; received {shown}")


class Options:
    """The declared options of one configuration dataclass, in command-line order, defaults read from its fields."""

    def __init__(self, config: type, options: list[Option]):
        fields = {f.name: f for f in dataclasses.fields(config)}
        self.config = config
        self._options: dict[str, Option] = {}
        for option in options:
            field = fields.get(option.name)
            if field is None:
                raise ValueError(f"option {option.name!r} is not a field of {config.__name__}")
            if option.name in self._options:
                raise ValueError(f"option {option.name!r} of {config.__name__} is declared twice")
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if default is dataclasses.MISSING:
                raise ValueError(f"field {option.name!r} of {config.__name__} has no default")
            self._options[option.name] = dataclasses.replace(option, default=default)

    def __iter__(self) -> Iterator[Option]:
        return iter(self._options.values())

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __contains__(self, name: str) -> bool:
        return name in self._options

    def __len__(self) -> int:
        return len(self._options)

    def names(self) -> list[str]:
        return list(self._options)

    def sweepable(self) -> list[Option]:
        """The options a sweep may vary, in the order of its grid keys: by SWEEP_MODES, then as declared."""
        return sorted((o for o in self if o.sweep), key=lambda o: SWEEP_MODES.index(o.sweep))

    def validate(self, config):
        """Check every declared field of `config` (in declared order); returns `config`."""
        for option in self:
            option.validate(getattr(config, option.name))
        return config

    def argv(self, config, names: tuple[str, ...] | None = None) -> list[str]:
        """The fields of `config` as command-line arguments, in declared order or in the order of `names`."""
        return [arg for name in (names or self.names()) for arg in self[name].argv(getattr(config, name))]


# --- checks and readers shared by the tables ---------------------------------------------------------------------

def one_of(choices, words: str | None = None) -> Callable[[Any], str | None]:
    """A check that a value is one of `choices` ("should be one of a, b, c", or "should be <words>")."""
    said = words or "one of " + ", ".join(choices)
    return lambda value: None if value in choices else f"should be {said}"


def positive(value) -> str | None:
    return None if value > 0 else "should be positive"  # NaN is refused too


def positive_int(value) -> str | None:
    return "should be a positive integer" if value < 1 else None


def fraction_below_one(value) -> str | None:
    return None if 0 <= value < 1 else "should be in [0, 1)"


def read_bool(value) -> bool:
    """true/false, 1/0, yes/no (a grid file's or an option's text), or a bool."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)
