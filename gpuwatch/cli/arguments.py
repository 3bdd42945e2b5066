"""What the subcommands share on the command line: each one's help texts (`CommandText`, turned into its
parser by `add_command`) and the checked argument types they take (a refused value is a usage error, exit 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

Number = TypeVar("Number", int, float)


class CommandText(NamedTuple):
    """What `gpuwatch COMMAND --help` says, and how it is laid out. A NamedTuple, not a dataclass: every
    command imports it, and `dataclasses` (with `inspect`) costs 11 ms of a cached `summary`'s 70."""

    help: str
    """The command's line in `gpuwatch --help`."""
    description: str | None
    """The paragraph under the usage line; None: none."""
    epilog: str
    """After the options: exit codes, examples."""
    usage: str | None = None
    """The usage line; None: argparse writes it from the arguments."""
    as_written: bool = False
    """Keep the line breaks of description and epilog (tables, examples) instead of re-wrapping them."""

    @classmethod
    def from_doc(
        cls, doc: str | None, *, epilog: str, usage: str | None = None, as_written: bool = False
    ) -> CommandText:
        """The help texts of a command whose module docstring describes it: its first line is the help line,
        its second paragraph the description (lines joined into one). Empty when docstrings are stripped
        (`python -OO`)."""
        paragraphs = [" ".join(p.split()).replace("%", "%%") for p in (doc or "").split("\n\n")]
        description = paragraphs[1] if len(paragraphs) > 1 else None
        return cls(
            help=paragraphs[0], description=description, epilog=epilog, usage=usage, as_written=as_written
        )


def add_command(sub: Any, name: str, text: CommandText) -> argparse.ArgumentParser:
    """The parser of subcommand `name` in `sub` (what `add_subparsers` returned), with its help texts."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        usage=text.usage,
        help=text.help,
        description=text.description,
        epilog=text.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter if text.as_written else argparse.HelpFormatter,
    )
    return parser


def checked(
    convert: Callable[[str], Number], not_one: str, refused: Callable[[Number], bool], why: str
) -> Callable[[str], Number]:
    """An argparse type: `convert(text)`; text it cannot convert is refused as `not_one: 'text'`, and a value
    for which `refused(value)` holds with `why`, formatted with `text` and `value`."""

    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{not_one}: {text!r}") from None
        if refused(value):
            raise argparse.ArgumentTypeError(why.format(text=text, value=value))
        return value

    return parse


def _not_finite_nonnegative(value: float) -> bool:
    return not value >= 0 or value == math.inf  # NaN fails `>= 0`


positive_float = checked(float, "not a number", lambda v: v <= 0, "must be positive: {text}")
"""Seconds and the like: a number > 0 (NaN passes, as it always has)."""
positive_int = checked(int, "not a whole number", lambda v: v <= 0, "must be positive: {text}")
pid = checked(int, "not a process id", lambda v: v <= 0, "not a process id: {text}")
sample_rate = checked(
    int,
    "not a whole number of samples per second",
    lambda v: not 1 <= v <= 1000,
    "must be 1-1000 samples per second, not {value}",
)
"""py-spy samples per second (whole, 1-1000)."""
hz = checked(float, "not a number", lambda v: not 0 <= v <= 1000, "must be 0-1000 per second, not {text}")
refresh_s = checked(
    float, "not a number", lambda v: not 0.05 <= v <= 60, "must be between 0.05 and 60 seconds, not {text}"
)
finite_nonnegative = checked(
    float, "not a number", _not_finite_nonnegative, "must be a finite number >= 0: {text!r}"
)
"""Limits in percent or percentage points."""
price = checked(
    float, "not a number", _not_finite_nonnegative, "a price per GPU-hour is a number >= 0, not {text!r}"
)
"""USD per GPU-hour."""
