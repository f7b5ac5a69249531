"""The endpoint Nomos posts signed events to (``nomos_billing:webhook``).

``WebhookView`` only coordinates (anymail's shape): verify (body size, signature on the raw
bytes), parse (``deliveries.parse_delivery``), hand over (``deliveries``: record once, then
process once or enqueue), answer: ``ANSWERS`` maps each outcome to its status code and text.
Nothing is stored before the signature is verified. An unexpected error (say, in a site's
signal receiver) is a 500; it is recorded on the event as ``failed`` first, so the redelivery
after a fix processes it.

After a delivery is recorded, the view gives ``takeover`` the chance to take over events that a
dead worker left ``processing``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.handlers.wsgi import WSGIRequest
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from . import misconfiguration, takeover, tasks
from .conf import SETTING_NAME, nomos_settings
from .deliveries import Answer, Outcome, hand_over, parse_delivery, record_delivery
from .exceptions import (
    BodyUnreadable,
    NomosConfigurationError,
    WebhookBodyTooLarge,
    WebhookError,
    WebhookSignatureMismatch,
)
from .signatures import META_KEY, verify_signature

logger = logging.getLogger("nomos_billing.webhooks")

#: Seconds a sender should wait before redelivering after a 503 for a database outage.
DATABASE_RETRY_AFTER = 30


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The raw body; ``WebhookBodyTooLarge`` when it is longer than ``limit`` bytes.

    Content-Length is checked before reading anything; reading ``limit + 1`` bytes also
    catches bodies without a length (chunked) without holding more than that in memory.

    A chunked body has no Content-Length. Django's WSGI request then reads nothing (it trusts
    the missing length as 0), so we read the server's stream ourselves when the server says it
    ends the stream at the body's end (``wsgi.input_terminated``: gunicorn, uvicorn's WSGI
    mode). A server that does not say so cannot be read safely: ``BodyUnreadable``.
    ASGI requests carry the whole body already.
    """
    meta = request.META
    raw_length = meta.get("CONTENT_LENGTH")
    try:
        declared = int(raw_length) if raw_length else None
    except ValueError:
        declared = None
    if declared is not None and declared > limit:
        raise WebhookBodyTooLarge
    if declared is None and isinstance(request, WSGIRequest):
        if meta.get("wsgi.input_terminated"):
            stream = meta["wsgi.input"]
        elif meta.get("HTTP_TRANSFER_ENCODING"):
            raise BodyUnreadable
        else:
            return b""
        body = stream.read(limit + 1)
    else:
        body = request.read(limit + 1)
    if len(body) > limit:
        raise WebhookBodyTooLarge
    return body


#: How the view answers each outcome: status, and the text for whoever reads the Nomos delivery
#: log (None: the rejection's own reason). Nomos retries any non-2xx.
ANSWERS: dict[Outcome, tuple[int, str | None]] = {
    "processed": (200, "processed"),
    "ignored": (200, "ignored: no handler for this topic"),
    "already processed": (200, "already processed"),
    # No redelivery can fix it: kept as failed for nomos_replay.
    "failed": (
        200,
        "processing failed and will not succeed on redelivery; kept as failed for nomos_replay",
    ),
    "test event": (200, "test event received"),
    # Recorded and queued for a worker that is alive (``tasks``, ``workers``); Nomos not called.
    # With no worker alive, the view processes the event itself and answers as inline.
    "queued": (202, "queued"),
    # Verification failed or not an event envelope (anymail's choice: Django answers 400 for a
    # ``SuspiciousOperation``, and 401 would promise an auth challenge we do not offer).
    "rejected": (400, None),
    "busy": (409, "in progress elsewhere; please redeliver later"),
    "unreadable": (411, "Content-Length required: this server cannot read a chunked request body"),
    "too large": (413, "request body too large"),
    # Nomos was unavailable while processing: the event is failed, and Nomos redelivers.
    "retry": (503, "processing failed; please redeliver"),
    # The event is kept failed, so that the redelivery enqueues it again.
    "queue unavailable": (503, "the task queue is unavailable; please redeliver"),
    # Our misconfiguration, not the sender's: nothing is stored, the operator is told once per
    # cool-down, and Nomos redelivers once the secret is set.
    "unconfigured": (
        503,
        "webhook secrets are not configured on this site; please redeliver later",
    ),
    # Refused, timed out or dropped: nothing, or only the claim, is stored; the redelivery finds
    # the claim and takes it over.
    "database unavailable": (503, "the database is unavailable; please redeliver"),
}

#: Said in the log beside a rejection where the operator can do something about it.
_ADVICE = {
    WebhookSignatureMismatch: (
        f"Copy the endpoint's signing secret from the Nomos dashboard into "
        f"{SETTING_NAME}['WEBHOOK_SECRETS']."
    ),
    BodyUnreadable: (
        "This server does not pass on a chunked body (no wsgi.input_terminated): run under "
        "gunicorn or uvicorn, or ask for Content-Length."
    ),
}


def respond(answer: Answer) -> HttpResponse:
    status, text = ANSWERS[answer.outcome]
    response = HttpResponse(
        f"{text or answer.detail}\n", status=status, content_type="text/plain; charset=utf-8"
    )
    if answer.retry_after:
        response["Retry-After"] = str(answer.retry_after)
    return response


def verify(request: HttpRequest, secrets: Sequence[str]) -> tuple[bytes, int]:
    """The body of a delivery whose signature holds, and the index of the secret that signed
    it; a ``WebhookError`` (whose ``outcome`` says the answer) when it does not."""
    body = read_body(request, nomos_settings.WEBHOOK_MAX_BYTES)
    if not body:
        raise WebhookError("request body is empty")
    secret_index = verify_signature(
        body, request.META.get(META_KEY), secrets, tolerance=nomos_settings.WEBHOOK_TOLERANCE
    )
    return body, secret_index


@method_decorator(
    [csrf_exempt, login_not_required, transaction.non_atomic_requests], name="dispatch"
)
class WebhookView(View):
    """Receives Nomos events. Not wrapped in ``ATOMIC_REQUESTS``: recording, processing and a
    failure record each commit on their own, so a failure survives the error response."""

    http_method_names = ["post"]
    #: Set once the delivery is stored: the database answers, and the sender is Nomos.
    recorded = False

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        started = time.monotonic()
        try:
            answer = self.receive(request)
        except (OperationalError, InterfaceError) as exc:
            # An outage on our side that a redelivery outlives, not a bug (a 500 would page
            # someone for it).
            logger.warning(
                "Answered a Nomos webhook 503: the database is unavailable (%s: %s)",
                type(exc).__name__,
                exc,
            )
            answer = Answer("database unavailable", retry_after=DATABASE_RETRY_AFTER)
        if self.recorded:
            takeover.after_delivery(started + nomos_settings.WEBHOOK_BUDGET)
        return respond(answer)

    def receive(self, request: HttpRequest) -> Answer:
        """Verify, parse, hand over (record, then process or enqueue)."""
        secrets = nomos_settings.WEBHOOK_SECRETS
        if not secrets:
            _report_missing_secrets()
            return Answer("unconfigured")
        try:
            body, secret_index = verify(request, secrets)
            data = parse_delivery(body)
        except WebhookError as exc:
            _log_rejection(exc)
            return Answer(exc.outcome, detail=str(exc))
        if data is None:
            return Answer("test event")
        queued = tasks.backend_alias() is not None
        # Inline, a new event is stored already claimed by this delivery (one statement).
        event, created = record_delivery(data, secret_index=secret_index, claim=not queued)
        self.recorded = True
        return hand_over(event, created, queued=queued)


def _log_rejection(exc: WebhookError) -> None:
    reason = str(exc) or ANSWERS[exc.outcome][1]
    advice = _ADVICE.get(type(exc))
    logger.warning("Rejected a Nomos webhook: %s%s", reason, f". {advice}" if advice else "")


def _report_missing_secrets() -> None:
    # Nothing can verify, and nothing is wrong with the sender: Nomos keeps redelivering until
    # the operator (told once per cool-down) sets the secret.
    misconfiguration.report(
        NomosConfigurationError(
            f"{SETTING_NAME}['WEBHOOK_SECRETS'] is empty, so no Nomos webhook can be "
            "verified; every delivery is answered 503 and redelivered by Nomos. Copy the "
            "endpoint's signing secret from the Nomos dashboard into that setting.",
            settings=("WEBHOOK_SECRETS",),
        )
    )
