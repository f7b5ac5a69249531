"""Nomos' list endpoints for ``NomosClient``: one page checked against its filters, and walks
over every page (``ListWalk``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import requests

from .exceptions import NomosAPIError
from .filters import ListFilter, check_page, query_params
from .httpdates import parse_http_date
from .responses import decode

# Named as before the split: a site's LOGGING configures "nomos_billing.client".
logger = logging.getLogger("nomos_billing.client")


class ListEndpoints:
    """The list methods of ``NomosClient``, which supplies the authorized request."""

    _authorized: Callable[..., requests.Response]

    def list_page(
        self,
        path: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        filters: Sequence[ListFilter] = (),
    ) -> dict[str, Any]:
        """One page of a list endpoint, every item checked against ``filters``.

        Raises ``NomosFilterIgnored`` when an item does not match: Nomos answers a filter it
        ignores with the unfiltered list.
        """
        return self._list_page(path, cursor=cursor, limit=limit, filters=filters)[0]

    def _list_page(
        self,
        path: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        filters: Sequence[ListFilter] = (),
    ) -> tuple[dict[str, Any], Mapping[str, str]]:
        """``list_page`` and the answer's headers."""
        params: dict[str, Any] = {"limit": limit, **query_params(filters)}
        if cursor:
            params["cursor"] = cursor
        response = self._authorized("GET", path, params=params)
        page = decode(response, "GET", path)
        if not isinstance(page, dict):
            raise NomosAPIError(
                200, "INVALID_RESPONSE", "list answer is not an object", method="GET", path=path
            )
        items = page.get("items")
        if items is None:
            items = page["items"] = []
        if not isinstance(items, list):
            raise NomosAPIError(
                200, "INVALID_RESPONSE", "list answer without items", method="GET", path=path
            )
        check_page(path, items, filters)
        return page, response.headers

    def iter_list(
        self, path: str, *, limit: int = 100, filters: Sequence[ListFilter] = ()
    ) -> ListWalk:
        """Every item of a list endpoint, one page fetched (and checked) at a time as the
        caller consumes them; the walk says afterwards whether it reached the last page."""
        return ListWalk(self, path, limit=limit, filters=filters)

    @staticmethod
    def subscription_filters(
        *,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> list[ListFilter]:
        found = list(filters)
        if customer:
            found.append(ListFilter("customer", "eq", customer))
        if updated_since is not None:
            found.append(ListFilter("updated_at", "gte", updated_since))
        return found

    def list_subscriptions(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> dict[str, Any]:
        """One page of ``GET /subscriptions`` (checked against its filters)."""
        return self.list_page(
            "/subscriptions",
            cursor=cursor,
            limit=limit,
            filters=self.subscription_filters(
                customer=customer, updated_since=updated_since, filters=filters
            ),
        )

    def iter_subscriptions(
        self,
        *,
        limit: int = 100,
        customer: str | None = None,
        updated_since: datetime | str | None = None,
        filters: Sequence[ListFilter] = (),
    ) -> ListWalk:
        """Every subscription (of ``customer``, changed since ``updated_since``, matching
        ``filters``), one page at a time; ``NomosFilterIgnored`` if Nomos ignored a filter."""
        return self.iter_list(
            "/subscriptions",
            limit=limit,
            filters=self.subscription_filters(
                customer=customer, updated_since=updated_since, filters=filters
            ),
        )

    def iter_customers(self, *, limit: int = 100, filters: Sequence[ListFilter] = ()) -> ListWalk:
        """Every customer matching ``filters``, one page at a time."""
        return self.iter_list("/customers", limit=limit, filters=filters)


class ListWalk(Iterator[dict[str, Any]]):
    """The items of one walk over a list endpoint, fetched a page at a time as they are
    consumed, and what the walk learnt once it ended:

    - ``complete``: the last page came (``has_more: false``); False while walking, after an
      error, or when a page said ``has_more`` without a ``next_page`` to go on with
      (``incomplete`` says so);
    - ``server_time``: Nomos' clock (its ``Date``) when it answered the first page: a bound a
      catch-up may take, where our own clock would be off by the skew between us.
    """

    def __init__(
        self, client: ListEndpoints, path: str, *, limit: int, filters: Sequence[ListFilter]
    ) -> None:
        self.path = path
        self.complete = False
        self.incomplete = ""
        self.pages = 0
        self.server_time: datetime | None = None
        self._items = self._walk(client, limit, tuple(filters))

    def __next__(self) -> dict[str, Any]:
        return next(self._items)

    def _walk(
        self, client: ListEndpoints, limit: int, filters: Sequence[ListFilter]
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        # Every cursor of this walk: one Nomos hands out again would loop forever.
        seen: set[str] = set()
        while True:
            page, headers = client._list_page(
                self.path, cursor=cursor, limit=limit, filters=filters
            )
            if not self.pages:
                self.server_time = parse_http_date(headers.get("Date"))
            self.pages += 1
            yield from page["items"]
            cursor = page.get("next_page")
            if not page.get("has_more"):
                self.complete = True
                return
            if not cursor:
                self.incomplete = (
                    f"Nomos answered page {self.pages} of GET {self.path} with has_more "
                    "but no next_page cursor"
                )
                logger.warning("%s; the walk ends there, incomplete", self.incomplete)
                return
            if str(cursor) in seen:
                raise NomosAPIError(
                    200,
                    "INVALID_RESPONSE",
                    "list answer whose next_page repeats an earlier cursor",
                    method="GET",
                    path=self.path,
                )
            seen.add(str(cursor))
