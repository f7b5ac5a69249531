"""Webhook processing on Django's tasks framework (``django.tasks``; the ``django-tasks``
backport on Django 5.2, installed with ``nomos-billing[tasks]``).

With ``NOMOS_BILLING["TASK_BACKEND"]`` naming an alias of the site's ``TASKS``, the webhook view
verifies and records a delivery, enqueues ``process_webhook_event`` with the event id and answers
``202`` without calling Nomos. The worker runs ``processing.process_event``: the same
conditional-UPDATE claim as inline processing, so an event is processed once however many web
processes, workers, replays and redeliveries meet it.

Only ids cross the queue (JSON, small, and the row stays the one truth). A worker that meets a
Nomos outage re-enqueues the event with growing delays (``lifecycle.retry_delay``), a bounded
number of times; after that the event stays ``failed`` for ``nomos_replay`` or the admin's
"Process again".

A worker that is killed mid-event (OOM, a deploy's SIGKILL) leaves it ``processing`` after the
view already answered 202, so no redelivery will come. Hence every claim a worker takes is
watched: before working, it enqueues a deferred copy of the job (``takeover=True``) to run just
after the claim would go stale. If the worker finished, that copy finds the event done and ends;
if it died, any worker that runs then takes the event over. It needs a backend that defers
(``supports_defer``: the database backend; RQ with ``rqworker --with-scheduler``); the webhook
view's sweep (``takeover``) covers the rest while deliveries come in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from . import workers
from .conf import SETTING_NAME, nomos_settings
from .exceptions import EnqueueError
from .lifecycle import claim_timeout, retry_delay
from .models import WebhookEvent
from .processing import process_event

logger = logging.getLogger("nomos_billing.tasks")

try:  # Django 6.0+
    from django.tasks import task, task_backends
    from django.tasks.exceptions import InvalidTaskBackend as InvalidTaskBackendError
except ImportError:  # pragma: no cover - Django 5.2 with or without the backport
    try:
        from django_tasks import task, task_backends  # type: ignore[no-redef,assignment]
        from django_tasks.exceptions import (  # type: ignore[no-redef,assignment]
            InvalidTaskBackendError,
        )
    except ImportError:
        task = None  # type: ignore[assignment]
        task_backends = None  # type: ignore[assignment]
        InvalidTaskBackendError = ImproperlyConfigured  # type: ignore[misc,assignment]

#: Seconds after a claim goes stale that its watchdog runs: a clock step or a worker's poll
#: interval must not let the watchdog find the claim still fresh, and end without a takeover.
WATCHDOG_MARGIN = 1.0


def framework_available() -> bool:
    return task is not None


def backend_alias() -> str | None:
    """``TASK_BACKEND`` when it is a non-empty string, else None (process inline)."""
    return nomos_settings.TASK_BACKEND


def get_backend() -> Any:
    """The configured task backend, or None when processing is inline."""
    alias = backend_alias()
    if alias is None:
        return None
    if task_backends is None:
        raise ImproperlyConfigured(
            f"{SETTING_NAME}['TASK_BACKEND'] is set but Django's tasks framework is not "
            "installed: use Django 6.0+, or install nomos-billing[tasks] on Django 5.2."
        )
    return task_backends[alias]


def _run(event_id: str, force: bool = False, retry: int = 0, takeover: bool = False) -> str:
    """What the worker does; a plain function so that tests and the immediate backend share it.

    ``takeover``: the watchdog copy of a job, which only takes over a stuck event.
    """
    _seen()
    event = WebhookEvent.objects.filter(event_id=event_id).first()
    if event is None:
        # Pruned (nomos_prune_events) between enqueue and run: nothing left to do.
        logger.warning("Webhook event %s is gone; nothing to process", event_id)
        return "missing"
    result = process_event(
        event,
        force=force,
        takeover=takeover,
        on_claim=lambda: _claimed(event_id, retry, takeover),
        # Queued events of the same subscription, taken along (one fetch): watched alike.
        on_claim_waiting=lambda other: _claimed(other.event_id, 0, False),
    )
    if result.claimed and result.retry:
        _retry_later(event_id, retry, result.retry_after)
    return str(result.status) if result.claimed else "busy"


def _seen() -> None:
    """Vouch that a worker of ``TASK_BACKEND`` is alive (``workers``): the webhook view answers
    202 only while one is."""
    alias = backend_alias()
    if alias is not None:
        workers.seen(alias)


def _claimed(event_id: str, retry: int, takeover: bool) -> None:
    """Enqueue the watchdog of the claim just taken: a deferred takeover just after it would go
    stale (``CLAIM_TIMEOUT``), for when this worker dies holding it."""
    if takeover:
        logger.warning(
            "Took over webhook event %s, left processing by a worker that stopped", event_id
        )
    backend = get_backend()
    if backend is None or not getattr(backend, "supports_defer", False):
        return
    try:
        enqueue(
            event_id,
            retry=retry,
            takeover=True,
            delay=claim_timeout().total_seconds() + WATCHDOG_MARGIN,
        )
    except EnqueueError as exc:
        # The webhook view's sweep still takes the event over if this worker dies.
        logger.warning("Could not enqueue the watchdog of webhook event %s: %s", event_id, exc)


def _retry_later(event_id: str, retry: int, retry_after: int | None) -> None:
    delay = retry_delay(retry, retry_after)
    if delay is None:
        logger.warning(
            "Webhook event %s failed %d times in the worker; kept as failed for nomos_replay",
            event_id,
            retry + 1,
        )
        return
    backend = get_backend()
    if backend is None or not getattr(backend, "supports_defer", False):
        # Re-enqueueing at once would hammer Nomos while it is down; the event stays failed
        # and replayable (nomos_replay --failed, the admin's "Process again").
        return
    try:
        enqueue(event_id, retry=retry + 1, delay=delay)
    except EnqueueError:
        logger.warning("Could not re-enqueue webhook event %s; kept as failed", event_id)


def _definition_alias() -> str:
    # A Task is validated against its backend when defined, and takes its class from it (the
    # backport's backends make backport Tasks). Bind the module's Task to TASK_BACKEND where
    # TASKS has it: a worker, with the site's settings, then finds a Task its backend accepts.
    from django.conf import settings

    alias = backend_alias()
    configured = getattr(settings, "TASKS", None)
    return alias if alias and isinstance(configured, dict) and alias in configured else "default"


def _process(event_id: str, force: bool = False, retry: int = 0, takeover: bool = False) -> str:
    """Process a recorded webhook event by its Nomos id (``evt_...``)."""
    return _run(event_id, force=force, retry=retry, takeover=takeover)


# The module path a Task records is its function's: make it name the attribute below.
_process.__name__ = _process.__qualname__ = "process_webhook_event"


def _catch_up() -> str:
    """The catch-up (``nomos_sync --since auto``) as a task, for backends that schedule."""
    import io

    from django.core.management import call_command

    _seen()
    out = io.StringIO()
    call_command("nomos_sync", since="auto", stdout=out)
    return out.getvalue().strip()


_catch_up.__name__ = _catch_up.__qualname__ = "catch_up"
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "process_webhook_event": _process,
    "catch_up": _catch_up,
}


def __getattr__(name: str) -> Any:
    """``process_webhook_event`` and ``catch_up``, the Tasks a worker imports by path, built on
    each look-up for the backend configured now: the database backend accepts only
    ``django.tasks`` Tasks, the backport's backends make their own, and tests switch
    ``TASK_BACKEND`` on the fly."""
    if name in _FUNCTIONS and task is not None:
        return task(backend=_definition_alias())(_FUNCTIONS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def enqueue(
    event_id: str, *, force: bool = False, retry: int = 0, delay: float = 0, takeover: bool = False
) -> Any:
    """Put the event on ``TASK_BACKEND``'s queue; ``EnqueueError`` when the queue refuses.

    Misconfiguration (no framework, unknown alias) raises ``ImproperlyConfigured`` instead:
    that is an operator's error for ``manage.py check``, not an outage.
    """
    alias = backend_alias()
    if alias is None or task is None:
        get_backend()  # explains what is missing
        raise ImproperlyConfigured(f"{SETTING_NAME}['TASK_BACKEND'] is not set")
    try:
        # Built for this alias (cheap): its class must be the one that backend accepts.
        configured = task(backend=alias)(_process)
    except InvalidTaskBackendError as exc:
        raise ImproperlyConfigured(f"{SETTING_NAME}['TASK_BACKEND'] = {alias!r}: {exc}") from exc
    if delay:
        configured = configured.using(run_after=timezone.now() + timedelta(seconds=delay))
    # Only a watchdog names ``takeover``: jobs queued before it existed still run.
    extra = {"takeover": True} if takeover else {}
    try:
        return configured.enqueue(event_id, force=force, retry=retry, **extra)
    except ImproperlyConfigured:
        raise
    except Exception as exc:
        # Brokers raise their own errors (redis.ConnectionError, OperationalError, ...).
        raise EnqueueError(f"{type(exc).__name__}: {exc}") from exc


def queue_depth() -> int | None:
    """Tasks waiting in ``TASK_BACKEND``'s queue where the backend can tell cheaply, else None.

    Scheduled tasks count (a retry after an outage waits there too). The database backend's
    count leaves out the claims' watchdogs, deferred guards that end at once when their worker
    finished; RQ's scheduled registry cannot tell them apart cheaply, so there they count.
    """
    backend = get_backend() if framework_available() else None
    if backend is None:
        return None
    path = f"{type(backend).__module__}.{type(backend).__qualname__}"
    try:
        if path.startswith("django_tasks_db."):
            from django.db.models import Count, Q
            from django_tasks_db.models import DBTaskResult

            # Counted, not excluded: NOT on a missing JSON key is NULL on SQLite, not true.
            counts = DBTaskResult.objects.filter(status="READY").aggregate(
                waiting=Count("pk"),
                watchdogs=Count("pk", filter=Q(args_kwargs__kwargs__takeover=True)),
            )
            return int(counts["waiting"] - counts["watchdogs"])
        if path.startswith("django_tasks_rq."):
            import django_rq

            queues = [django_rq.get_queue(name) for name in backend.queues]
            return sum(len(q) + q.scheduled_job_registry.count for q in queues)
    except Exception:  # a monitoring read must never take the page down
        logger.info("Could not read the queue depth of %s", path, exc_info=True)
    return None
