"""A column of a few distinct values (span kinds, categories: object arrays of str/None) as integer codes.

Comparing an object array with a string costs a string comparison per span (2.4 ms for 123k spans); the
engine asks a dozen such questions per rank. Coding the column once (one dict lookup per span, about 7 ms)
turns every later question into an integer comparison (0.01 ms).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gpuwatch.records import CATEGORY_OR_NONE, SPAN_KINDS, SpanColumns


class ValueCodes:
    """`column` coded by first occurrence: spans with equal values (==, so None too) share one code."""

    def __init__(self, column: np.ndarray) -> None:
        index: dict[Any, int] = {}
        n = column.shape[0]
        self.codes = np.fromiter(map(index.setdefault, column.tolist(), range(n)), np.int64, n)
        self._index = index

    @classmethod
    def of(cls, column: np.ndarray, codes: np.ndarray | None, values: tuple[Any, ...]) -> ValueCodes:
        """`column` coded: by `codes` into `values` when its producer gave them (`SpanColumns.kind_code`,
        `category_code`), else by reading it."""
        if codes is None:
            return cls(column)
        self = cls.__new__(cls)
        self.codes = codes
        self._index = {value: i for i, value in enumerate(values)}
        return self

    def eq(self, value: Any) -> np.ndarray:
        """Mask of the spans whose value equals `value`."""
        code = self._index.get(value)
        if code is None:
            return np.zeros(self.codes.shape, dtype=bool)
        return self.codes == code

    def isin(self, values: Iterable[Any]) -> np.ndarray:
        """Mask of the spans whose value is one of `values`."""
        out = np.zeros(self.codes.shape, dtype=bool)
        for value in set(values):
            code = self._index.get(value)
            if code is not None:
                out |= self.codes == code
        return out


def span_kinds(cols: SpanColumns) -> ValueCodes:
    """The spans' kinds coded (from `kind_code` when the producer set it)."""
    return ValueCodes.of(cols.kind, cols.kind_code, SPAN_KINDS)


def span_categories(cols: SpanColumns) -> ValueCodes:
    """The spans' categories coded (from `category_code` when the producer set it)."""
    return ValueCodes.of(cols.category, cols.category_code, CATEGORY_OR_NONE)


def kind_is(cols: SpanColumns, kind: str) -> np.ndarray:
    """Mask of the spans of one kind: an integer comparison where the producer coded the kinds (an import),
    else one string comparison per span (cheaper than coding the column for a single question)."""
    if cols.kind_code is not None:
        return cols.kind_code == SPAN_KINDS.index(kind)
    return cols.kind == kind
