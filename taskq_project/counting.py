"""Counting rows of large tables without reading them all."""

import json
from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

# Up to this many rows (by the planner's estimate) a count is exact.
EXACT_COUNT_LIMIT = 100_000


def planner_estimate(queryset: QuerySet[Any]) -> int:
    """The planner's row estimate for `queryset`: a catalog lookup, no scan."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        (plan,) = cursor.fetchone()  # type: ignore[misc]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def count_or_estimate(queryset: QuerySet[Any]) -> tuple[int, bool]:
    """(count, estimated): exact unless the planner expects a large result."""
    estimate = planner_estimate(queryset.order_by())
    if estimate > EXACT_COUNT_LIMIT:
        return estimate, True
    return queryset.count(), False


class EstimatedCountPaginator(Paginator):
    """A paginator for the admin that never runs COUNT(*) over a large table.

    Large results are paged by the planner's estimate (marked as such in the
    template); a page past the real end is simply empty.
    """

    @cached_property
    def _count(self) -> tuple[int, bool]:
        return count_or_estimate(self.object_list)  # type: ignore[arg-type]

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        return self._count[0]

    @property
    def estimated(self) -> bool:
        return self._count[1]

    def validate_number(self, number: Any) -> int:
        # With an estimated count the last pages may not exist; let them be empty
        # rather than an error page.
        if self.estimated:
            try:
                value = int(number)
            except (TypeError, ValueError):
                return 1
            return max(value, 1)
        return super().validate_number(number)
