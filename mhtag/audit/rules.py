"""Rules the labels follow, learnt from the labels themselves, and the rows that break them.

A catalogue's attributes often nest: every `Sandals` row is `subCategory` `Sandal`, every `Socks` row is
`Accessories`. Where one attribute determines another on nearly every row (a hierarchy), a row that disagrees
with the rest of its value's rows is most likely a wrong label: `articleType` Sandals with `subCategory` Shoes,
while 309 other Sandals rows say Sandal. No image is needed to find it, only the label table.
"""

from __future__ import annotations

import pandas as pd

from mhtag.data.labels import ROW
from mhtag.results import RuleBreak

MIN_ROWS = 10  # rows a value of A needs before its usual B counts as a rule
MIN_SHARE = 0.9  # and the share of them that must follow it
# A determines B (a hierarchy) where rules cover at least this share of the rows with both labels. On fashion12k
# the three hierarchy pairs are covered .987-.998, the next pair (articleType -> usage) .572: a value's usual B is
# a tendency there, not a rule. Per value, so a hierarchy stays one under a few percent of wrong labels
# (benchmarks/audit_rules.py).
MIN_COVERED = 0.9


def rule_breaks(frame: pd.DataFrame, attributes: list[str], min_rows: int = MIN_ROWS, min_share: float = MIN_SHARE,
                min_covered: float = MIN_COVERED) -> list[RuleBreak]:
    """Rows whose label of B breaks a rule "A = a -> B = b" (at least `min_rows` rows with A = a, at least
    `min_share` of them with B = b) that the other rows follow, for every ordered pair of single-label attributes
    where such rules cover at least `min_covered` of the rows with both labels.
    One break per row and attribute (the rule with the most support); the best-supported rules come first."""
    found: dict[tuple[int, str], RuleBreak] = {}
    for a in attributes:
        for b in attributes:
            if a != b:
                for br in _breaks_of(frame, a, b, min_rows, min_share, min_covered):
                    key = (br.row, br.attribute)
                    if key not in found or br.support > found[key].support:
                        found[key] = br
    return sorted(found.values(), key=lambda br: (-br.support / br.rows, -br.support, br.row))


def _breaks_of(frame: pd.DataFrame, a: str, b: str, min_rows: int, min_share: float, min_covered: float
               ) -> list[RuleBreak]:
    both = frame[[a, b, ROW, "path", "split"]].dropna(subset=[a, b])
    both = both[(both[a].astype(str).str.strip() != "") & (both[b].astype(str).str.strip() != "")]
    if both.empty:
        return []
    counts = both.groupby([a, b]).size()
    per_value, support = counts.groupby(level=0).sum(), counts.groupby(level=0).max()
    ruled = (per_value >= min_rows) & (support >= min_share * per_value)
    if per_value[ruled].sum() < min_covered * len(both):
        return []  # A does not determine B: most of its values' B vary, there is no hierarchy
    usual = counts.groupby(level=0).idxmax().map(lambda ab: ab[1])[ruled]  # a value with a rule -> its b
    broken = both[both[a].isin(usual.index) & (both[b] != both[a].map(usual))]
    return [RuleBreak(path=str(path), row=int(row), split=str(split), attribute=b, given=str(given),
                      expected=str(usual[value]), rule=f"{a}={value} -> {b}={usual[value]}",
                      support=int(support[value]), rows=int(per_value[value]))
            for value, given, row, path, split in zip(broken[a], broken[b], broken[ROW], broken["path"],
                                                     broken["split"], strict=True)]
