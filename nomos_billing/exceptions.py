"""The errors nomos_billing raises.

``NomosError`` is the root; a site that wants to catch everything from us catches that.
Messages carry the Nomos ``code``, ``message`` and ``requestId`` so that an operator can quote
them to Nomos support; they never carry an access token, a client secret or a webhook secret.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation

#: What went wrong, as the views, the commands and the logs tell it apart:
#: ``failed`` (ours, or nothing more is known), ``outage`` (Nomos unreachable or answering
#: 429/5xx), ``rate_limited`` (this user, no call made), ``misconfigured`` (a setting),
#: ``refused`` (Nomos refused our credentials: 401/403), ``not_found`` (404), ``rejected``
#: (another error status), ``invalid`` (400/422 with business errors the user can fix),
#: ``filter_ignored`` (a list answer that ignored our filter), ``not_linked`` (no customer).
Kind = Literal[
    "failed",
    "outage",
    "rate_limited",
    "misconfigured",
    "refused",
    "not_found",
    "rejected",
    "invalid",
    "filter_ignored",
    "not_linked",
]


class NomosError(Exception):
    """Base class for every error raised by nomos_billing.

    ``kind`` says what went wrong (``Kind``), so that callers need not re-derive it from the
    class; ``reported`` is True for errors already logged where they were raised
    (``misconfiguration.report``), which callers do not log again.
    """

    kind: Kind = "failed"
    reported: ClassVar[bool] = False


class NomosConfigurationError(NomosError, ImproperlyConfigured):
    """A setting in ``NOMOS_BILLING`` is missing or wrong; the message names it.

    An operator error, not an outage: it stays until someone changes the settings, so it is
    not retried, says nothing about Nomos' health (an outage breaker does not count it), is
    logged at ERROR once per cool-down (``misconfiguration.report``) and users are not told
    to come back in a few minutes. ``settings`` names the ``NOMOS_BILLING`` keys to fix.
    """

    kind: Kind = "misconfigured"
    reported: ClassVar[bool] = True
    settings: tuple[str, ...] = ()

    def __init__(self, message: str = "", *, settings: tuple[str, ...] = ()) -> None:
        if settings:
            self.settings = settings
        super().__init__(message)


class NomosAPIError(NomosError):
    """Nomos answered with an error status.

    ``status`` is the HTTP status, ``code``/``message``/``request_id``/``errors`` come from the
    Nomos error envelope (``{"code", "message", "requestId", "errors": [...]}``) when there is
    one. ``field_errors()`` maps each business error's ``field`` to its entries. ``kind``
    follows the status: ``not_found`` (404), ``refused`` (401/403), ``invalid`` (400/422 with
    business errors), else ``rejected``.
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str = "",
        *,
        method: str = "",
        path: str = "",
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.method = method
        self.path = path
        # The envelope's ``errors`` list (business errors such as ``unserviceable_zip`` on
        # ``address.zip``), each cut down to its string ``code``/``field``/``message``.
        self.errors: list[dict[str, str]] = list(errors or [])
        self.kind = self._status_kind()
        # Not super(): in NomosServiceError the next class is NomosUnavailable, whose
        # __init__ would reset status and request_id.
        Exception.__init__(self, str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.path} " if self.method else ""
        parts = [f"{where}-> HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        if self.message:
            parts.append(self.message)
        text = ": ".join(parts)
        if self.request_id:
            text += f" (requestId {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"request_id={self.request_id!r})"
        )

    def _status_kind(self) -> Kind:
        if self.is_not_found:
            return "not_found"
        if self.is_auth_failure:
            return "refused"
        if self.status in (400, 422) and self.errors:
            return "invalid"
        return "rejected"

    def field_errors(self) -> dict[str, list[dict[str, str]]]:
        """The ``errors`` entries grouped by ``field`` ("" for those without one)."""
        grouped: dict[str, list[dict[str, str]]] = {}
        for entry in self.errors:
            grouped.setdefault(entry.get("field", ""), []).append(entry)
        return grouped

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_auth_failure(self) -> bool:
        return self.status in (401, 403)


class NomosUnavailable(NomosError):
    """Nomos could not be reached in time: timeout, connection error, exhausted retries, or a
    ``Retry-After`` too long to wait for inside a request.

    ``retry_after`` (seconds) is a hint for the ``Retry-After`` header of our own 503 page.
    """

    kind: Kind = "outage"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class NomosServiceError(NomosAPIError, NomosUnavailable):
    """Nomos answered 429 or 5xx and retries did not help (or ``Retry-After`` was too long).

    It is both an API error (it has ``status`` and ``request_id``) and an outage
    (``except NomosUnavailable`` catches it, and it carries ``retry_after``).
    """

    def __init__(self, *args: Any, retry_after: int | None = None, **kwargs: Any) -> None:
        # NomosAPIError's arguments, and the outage's Retry-After.
        NomosAPIError.__init__(self, *args, **kwargs)
        self.kind = "outage"
        self.retry_after = retry_after


class NomosFilterIgnored(NomosAPIError):
    """A list answer holds an item that does not match the filter we asked for.

    Nomos ignores filters it does not know (unknown field, disallowed operator) and answers with
    the unfiltered list, so a walk that trusted it would process the wrong items. The walk stops
    before handing on the page that showed it.
    """

    def __init__(self, path: str, filter: str, item_id: str) -> None:
        super().__init__(
            200,
            "FILTER_IGNORED",
            f"item {item_id or '?'} does not match {filter}; Nomos ignored the filter, "
            "so the list was refused",
            method="GET",
            path=path,
        )
        self.kind = "filter_ignored"
        self.filter = filter
        self.item_id = item_id


class NomosCredentialsRefused(NomosAPIError, NomosConfigurationError):
    """Nomos' token endpoint refused ``CLIENT_ID`` / ``CLIENT_SECRET`` (HTTP 401 or 403).

    Both an API error (``status``, ``request_id`` for Nomos support) and a configuration error
    (``except NomosConfigurationError`` catches it): a wrong secret does not heal by waiting.
    """

    settings = ("CLIENT_ID", "CLIENT_SECRET")


class RateLimited(NomosUnavailable):
    """The user made more requests of one kind (``scope``) than ``RATE_LIMITS`` allows, and no
    Nomos call was made. ``retry_after`` is when the next one fits.

    A ``NomosUnavailable``: to this user Nomos is unavailable until then, so a site's own view
    that catches that shows its "try again later"; ours answer 429.
    """

    kind: Kind = "rate_limited"

    def __init__(self, scope: str, retry_after: int) -> None:
        self.scope = scope
        super().__init__(
            f"rate limit for {scope!r} reached; retry in {retry_after} s", retry_after=retry_after
        )


class NomosNotLinked(NomosError):
    """The Django user has no ``NomosCustomer`` yet, so there is nothing to mint a link for."""

    kind: Kind = "not_linked"


# -- webhook deliveries ---------------------------------------------------------------------------
# Each webhook error is a ``NomosError``. Those raised before a delivery is stored are also a
# ``SuspiciousOperation`` (anymail's ``AnymailWebhookValidationFailure``), and their ``outcome``
# names the webhook view's answer (``webhooks.ANSWERS``).

#: The outcomes of a delivery refused before it is stored (``deliveries.Outcome``).
WebhookRejection = Literal["rejected", "too large", "unreadable"]


class WebhookError(NomosError, SuspiciousOperation):
    """A webhook delivery failed verification, or is no event we can store. Django answers 400
    and logs on ``django.security``; our view answers with a short reason instead."""

    outcome: ClassVar[WebhookRejection] = "rejected"


class WebhookSignatureMissing(WebhookError):
    pass


class WebhookSignatureMalformed(WebhookError):
    pass


class WebhookTimestampOutOfRange(WebhookError):
    pass


class WebhookSignatureMismatch(WebhookError):
    pass


class WebhookBodyTooLarge(WebhookError):
    """The body is over ``WEBHOOK_MAX_BYTES``."""

    outcome = "too large"


class BodyUnreadable(WebhookError):
    """The server cannot give us the body (chunked, without ``wsgi.input_terminated``)."""

    outcome = "unreadable"


class InvalidEvent(WebhookError, ValueError):
    """The envelope or its context is not something we can process; retrying will not help.

    Raised for a delivery (answered 400, nothing stored) and by a handler on a stored event
    (kept ``failed``)."""


class NotReadableYet(NomosError):
    """Nomos answered 404 for the subscription of a fresh ``subscription.*`` event.

    Nomos fires ``subscription.created`` right after checkout, and a read may not find the new
    subscription yet. Inside ``NOT_FOUND_RETRY_WINDOW`` (counted from our first receipt of the
    event) the event stays ``failed`` and the webhook answers 503 so that Nomos redelivers;
    after it, the 404 is final (200, ``failed``, kept for ``nomos_replay``).
    """


class EnqueueError(NomosError):
    """The task queue did not take the event (broker down, database backend unwritable)."""
