"""HTTP responses Django does not ship."""

from __future__ import annotations

from django.http import HttpResponseRedirect


class HttpResponseSeeOther(HttpResponseRedirect):
    """A 303 redirect: after a POST, the browser follows it with a GET (RFC 9110, 15.4.4)."""

    status_code = 303
