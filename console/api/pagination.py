from __future__ import annotations

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property
from rest_framework import pagination

# Above this many rows (PostgreSQL's estimate), an unfiltered list's total is the estimate: an exact COUNT(*) reads
# the whole table on every page (tens of ms at 100k rows); below it, the count is exact.
ESTIMATE_ABOVE = 10_000


def estimated_count(queryset: QuerySet) -> int | None:
    """The total of an unfiltered list on PostgreSQL in one query: the planner's row estimate for its table when that
    is at least ESTIMATE_ABOVE, else the exact count. None when the list is filtered or the database is another."""
    query = queryset.query
    connection = connections[queryset.db]
    if connection.vendor != "postgresql" or query.where.children or query.combinator or query.distinct:
        return None
    if query.low_mark or query.high_mark is not None:
        return None
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT CASE WHEN c.reltuples < %s THEN (SELECT count(*) FROM {table}) "  # noqa: S608 (a quoted table name)
            "ELSE c.reltuples::bigint END FROM pg_class c WHERE c.oid = %s::regclass",
            [ESTIMATE_ABOVE, table],
        )
        return int(cursor.fetchone()[0])


class KnownCountPaginator(Paginator):
    """Django's paginator with the total given when the caller knows it without COUNT(*) (a scan of the table)."""

    def __init__(self, *args, known_count: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.known_count = known_count

    @cached_property
    def count(self) -> int:
        if self.known_count is not None:
            return self.known_count
        if isinstance(self.object_list, QuerySet) and (estimate := estimated_count(self.object_list)) is not None:
            return estimate
        return Paginator.count.func(self)


class PageNumberPagination(pagination.PageNumberPagination):
    """?page=N&page_size=M (at most 500). The total: exact, except for an unfiltered list of more than
    ESTIMATE_ABOVE rows on PostgreSQL (the planner's estimate), and a view with a `known_count()` method (None when
    it does not know) gives it itself: the audit log's unfiltered count is its head id, read from the index."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        known = getattr(view, "known_count", None)
        self._known_count = known() if known is not None else None
        return super().paginate_queryset(queryset, request, view)

    def django_paginator_class(self, object_list, per_page, *args, **kwargs) -> Paginator:
        return KnownCountPaginator(object_list, per_page, *args, known_count=self._known_count, **kwargs)
