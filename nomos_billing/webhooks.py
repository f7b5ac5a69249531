"""The endpoint Nomos posts signed events to (``nomos_billing:webhook``).

Order of work: limit the body size, verify the signature on the raw bytes, parse the envelope,
record it once, process it once (``processing``). Nothing is stored before the signature is
verified. Answers are short plain text for whoever reads the Nomos delivery log:

- 400: verification failed or not an event envelope (anymail's choice: Django answers 400 for
  a ``SuspiciousOperation``, and 401 would promise an auth challenge we do not offer; Nomos
  retries any non-2xx either way);
- 413: body over ``WEBHOOK_MAX_BYTES``;
- 200: processed, ignored topic, duplicate of a finished event, or failed in a way no
  redelivery can fix (the event is kept as ``failed`` for ``nomos_replay``);
- 202 with ``TASK_BACKEND``: recorded and queued for a worker that is alive (``tasks``,
  ``workers``), Nomos not called; with no worker alive, the view processes the event itself
  and answers as above;
- 409 with ``Retry-After``: another worker holds the event's claim (see ``_busy``);
- 503: Nomos was unavailable while processing, or the task queue refused the event; the event
  is ``failed`` and Nomos redelivers; also when ``WEBHOOK_SECRETS`` is empty (our
  misconfiguration, not the sender's: nothing is stored, the operator is told once per
  cool-down, and Nomos redelivers once it is set), and when the database refuses or times out
  (nothing, or only the claim, is stored; the redelivery finds the claim and takes it over);
- 500: an unexpected error (say, in a site's signal receiver); it is recorded on the event as
  ``failed`` first, so the redelivery after a fix processes it.

After a delivery is recorded, the view gives ``takeover`` the chance to take over events that a
dead worker left ``processing``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIRequest
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from . import misconfiguration, takeover, tasks, workers
from .conf import SETTING_NAME, nomos_settings
from .exceptions import NomosConfigurationError, WebhookError, WebhookSignatureMismatch
from .jsonsafe import problem
from .models import WebhookEvent
from .processing import InvalidEvent, Result, claim_timeout, process_event, record_delivery
from .signatures import META_KEY, verify_signature

logger = logging.getLogger("nomos_billing.webhooks")

Status = WebhookEvent.Status

#: Seconds a sender should wait before redelivering after a 503 for a database outage.
DATABASE_RETRY_AFTER = 30


def _text(status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    for name, value in headers.items():
        response[name] = value
    return response


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity, which PostgreSQL's jsonb does not.
    raise ValueError(f"{name} is not valid JSON")


class BodyUnreadable(Exception):
    """The server cannot give us the body (chunked, without ``wsgi.input_terminated``)."""


def read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The raw body, or None when it is longer than ``limit`` bytes.

    Content-Length is checked before reading anything; reading ``limit + 1`` bytes also
    catches bodies without a length (chunked) without holding more than that in memory.

    A chunked body has no Content-Length. Django's WSGI request then reads nothing (it trusts
    the missing length as 0), so we read the server's stream ourselves when the server says it
    ends the stream at the body's end (``wsgi.input_terminated``: gunicorn, uvicorn's WSGI
    mode). A server that does not say so cannot be read safely: ``BodyUnreadable`` (411).
    ASGI requests carry the whole body already.
    """
    meta = request.META
    raw_length = meta.get("CONTENT_LENGTH")
    try:
        declared = int(raw_length) if raw_length else None
    except ValueError:
        declared = None
    if declared is not None and declared > limit:
        return None
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
    return None if len(body) > limit else body


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
            response = self.receive(request)
        except (OperationalError, InterfaceError) as exc:
            # Refused, timed out (connect_timeout, statement_timeout) or dropped: an outage on
            # our side that a redelivery outlives, not a bug (a 500 would page someone for it).
            logger.warning(
                "Answered a Nomos webhook 503: the database is unavailable (%s: %s)",
                type(exc).__name__,
                exc,
            )
            return _text(
                503,
                "the database is unavailable; please redeliver",
                **{"Retry-After": str(DATABASE_RETRY_AFTER)},
            )
        if self.recorded:
            takeover.after_delivery(started + nomos_settings.WEBHOOK_BUDGET)
        return response

    def receive(self, request: HttpRequest) -> HttpResponse:
        """Verify, record and process (or enqueue) one delivery."""
        secrets = nomos_settings.WEBHOOK_SECRETS
        if not secrets:
            # Nothing can verify, and nothing is wrong with the sender: 503 so Nomos keeps
            # redelivering until the operator (told once per cool-down) sets the secret.
            misconfiguration.report(
                NomosConfigurationError(
                    f"{SETTING_NAME}['WEBHOOK_SECRETS'] is empty, so no Nomos webhook can be "
                    "verified; every delivery is answered 503 and redelivered by Nomos. Copy the "
                    "endpoint's signing secret from the Nomos dashboard into that setting.",
                    settings=("WEBHOOK_SECRETS",),
                )
            )
            return _text(
                503, "webhook secrets are not configured on this site; please redeliver later"
            )
        try:
            body = read_body(request, nomos_settings.WEBHOOK_MAX_BYTES)
        except BodyUnreadable:
            logger.warning(
                "Rejected a Nomos webhook: a chunked body, which this server does not pass on "
                "(no wsgi.input_terminated); run under gunicorn or uvicorn, or ask for "
                "Content-Length"
            )
            return _text(
                411,
                "Content-Length required: this server cannot read a chunked request body",
            )
        if body is None:
            logger.warning("Rejected a Nomos webhook: the body is over WEBHOOK_MAX_BYTES")
            return _text(413, "request body too large")
        if not body:
            logger.warning("Rejected a Nomos webhook: the request has no body")
            return _text(400, "request body is empty")
        try:
            secret_index = verify_signature(
                body,
                request.META.get(META_KEY),
                secrets,
                tolerance=nomos_settings.WEBHOOK_TOLERANCE,
            )
        except WebhookError as exc:
            self._log_rejection(exc)
            return _text(400, str(exc))
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            logger.warning("Rejected a signed Nomos webhook: the body is not JSON")
            return _text(400, "body is not JSON")
        unstorable = problem(data)
        if unstorable:
            # Signed, so Nomos (or whoever holds the secret) sent it; stored, it would fail on
            # PostgreSQL on every redelivery. Refused the same way on every database.
            logger.warning("Rejected a signed Nomos webhook: the body holds %s", unstorable)
            return _text(400, f"body holds {unstorable}, which cannot be stored")
        if isinstance(data, dict) and data.get("topic") == "test.event" and not data.get("id"):
            # The dashboard's "send test event" may come without an id; there is nothing to
            # deduplicate or process, and a made-up id would only clutter the event log.
            return _text(200, "test event received")
        queued = tasks.backend_alias() is not None
        try:
            # Inline, a new event is stored already claimed by this delivery (one statement).
            event, created = record_delivery(data, secret_index=secret_index, claim=not queued)
        except InvalidEvent as exc:
            logger.warning("Rejected a signed Nomos webhook: %s", exc)
            return _text(400, str(exc))
        self.recorded = True
        if not created and event.status in (Status.PROCESSED, Status.IGNORED):
            return _text(200, "already processed")
        if queued:
            return self._enqueue(event, created)
        if created and event.status != Status.PROCESSING:  # finished when recorded
            return self._respond(Result(event, claimed=True))
        return self._respond(process_event(event, claimed=created))

    def _enqueue(self, event: WebhookEvent, created: bool) -> HttpResponse:
        """Hand the event to a worker and answer 202 once one is alive to take it (``TASK_BACKEND``
        set); with no worker alive, process it here (``workers``)."""
        if not created and not tasks.needs_enqueue(event):
            if event.status == Status.PROCESSING:
                return self._busy(event)  # in a worker's hands, not merely queued
            return self._handed_over(event)  # its job waits in the queue
        try:
            tasks.enqueue(event.event_id)
        except (tasks.EnqueueError, ImproperlyConfigured) as exc:
            # ImproperlyConfigured: TASK_BACKEND names no backend (check W030 says so); keep
            # the event and let Nomos redeliver once the settings are fixed.
            logger.error("Could not enqueue Nomos webhook event %s: %s", event.event_id, exc)
            # Failed, not received: a received event counts as queued, so only this mark makes
            # Nomos' redelivery (or nomos_replay --failed) enqueue it again.
            tasks.mark_enqueue_failed(event, exc)
            return _text(503, "the task queue is unavailable; please redeliver")
        return self._handed_over(event)

    def _handed_over(self, event: WebhookEvent) -> HttpResponse:
        alias = tasks.backend_alias()
        if alias is None or workers.handed_over(event, alias):
            return _text(202, "queued")
        # A 202 now would promise a worker nobody runs: do the worker's job, as inline would.
        workers.report_absent(alias, event.event_id)
        return self._respond(process_event(event))

    def _respond(self, result: Result) -> HttpResponse:
        event = result.event
        if not result.claimed:
            if event.status in (Status.PROCESSED, Status.IGNORED):
                return _text(200, "already processed")
            return self._busy(event)
        if event.status == Status.PROCESSED:
            return _text(200, "processed")
        if event.status == Status.IGNORED:
            return _text(200, "ignored: no handler for this topic")
        if result.retry:
            headers = {"Retry-After": str(result.retry_after)} if result.retry_after else {}
            return _text(503, "processing failed; please redeliver", **headers)
        return _text(
            200,
            "processing failed and will not succeed on redelivery; kept as failed for nomos_replay",
        )

    def _busy(self, event: WebhookEvent) -> HttpResponse:
        """Another worker holds the event's claim: 409, never a 2xx.

        A 2xx would tell Nomos the event is delivered, yet the worker holding the claim may die
        before it finishes, and whether its own delivery ever gets an answer is not ours to
        know. So Nomos keeps redelivering until one answer says processed; by then the event is
        processed (200), failed (reprocessed) or its claim stale (taken over). 409, not 5xx:
        nothing is broken. ``Retry-After`` is when the claim would go stale.
        """
        claimed_at = event.claimed_at or timezone.now()
        left = (claimed_at + claim_timeout() - timezone.now()).total_seconds()
        return _text(
            409,
            "in progress elsewhere; please redeliver later",
            **{"Retry-After": str(max(1, math.ceil(left)))},
        )

    def _log_rejection(self, exc: WebhookError) -> None:
        # The hint to re-copy the secret only where a secret is really at stake: a valid
        # header whose MAC matches none of the configured secrets.
        if isinstance(exc, WebhookSignatureMismatch) and nomos_settings.WEBHOOK_SECRETS:
            logger.warning(
                "Rejected a Nomos webhook: the signature matches none of %s['WEBHOOK_SECRETS']. "
                "Copy the endpoint's signing secret from the Nomos dashboard into that setting.",
                SETTING_NAME,
            )
        else:
            logger.warning("Rejected a Nomos webhook: %s", exc)
