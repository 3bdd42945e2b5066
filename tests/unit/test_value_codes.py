"""ValueCodes: an object column's tests as integer comparisons, equal to the string comparisons they replace."""

from __future__ import annotations

import numpy as np

from gpuwatch.attribution.value_codes import ValueCodes, span_categories, span_kinds
from gpuwatch.records import CATEGORY_OR_NONE, SPAN_KINDS


def test_codes_answer_what_the_object_column_answers() -> None:
    rng = np.random.default_rng(7)
    values = np.array(["kernel", "cpu_op", None, "runtime", "step", "kernel " + "x"], dtype=object)
    column = values[rng.integers(0, values.size, 5_000)]
    column[::97] = "".join(["cpu", "_op"])  # equal text, another object: one code all the same
    codes = ValueCodes(column)
    for value in ["kernel", "cpu_op", None, "runtime", "step", "absent"]:
        assert (codes.eq(value) == np.array([v == value for v in column.tolist()])).all(), value
    wanted = ["kernel", None, "absent"]
    assert (codes.isin(wanted) == np.array([v in wanted for v in column.tolist()])).all()
    empty = ValueCodes(np.empty(0, dtype=object))
    assert empty.eq("kernel").size == 0 and empty.isin(["kernel"]).size == 0


def test_given_codes_are_read_as_indexes_into_their_values() -> None:
    kind = np.array(["kernel", "cpu_op", "kernel", "step"], dtype=object)
    kind_code = np.array([SPAN_KINDS.index(k) for k in kind.tolist()])
    category = np.array(["compute", None, "sync", None], dtype=object)
    category_code = np.array([CATEGORY_OR_NONE.index(c) for c in category.tolist()])

    class Cols:  # the two columns span_kinds / span_categories read, with and without codes
        def __init__(self, with_codes: bool) -> None:
            self.kind, self.category = kind, category
            self.kind_code = kind_code if with_codes else None
            self.category_code = category_code if with_codes else None

    for with_codes in (True, False):
        cols = Cols(with_codes)
        assert span_kinds(cols).eq("kernel").tolist() == [True, False, True, False]  # type: ignore[arg-type]
        assert span_kinds(cols).isin(["step", "cpu_op"]).tolist() == [False, True, False, True]  # type: ignore[arg-type]
        assert span_categories(cols).eq(None).tolist() == [False, True, False, True]  # type: ignore[arg-type]
        assert span_categories(cols).eq("sync").tolist() == [False, False, True, False]  # type: ignore[arg-type]
