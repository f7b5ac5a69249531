"""Settings for the test suite: SQLite + local memory by default; PostgreSQL and Redis when
DATABASE_URL / CACHE_URL are set (as .ci/run does)."""

from __future__ import annotations

import os
import tempfile
from importlib.util import find_spec
from urllib.parse import urlsplit, urlunsplit

import django
import environ

env = environ.Env()

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
USE_I18N = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "nomos_billing",
]
# The real task backends (test_tasks_workers.py), when the test extra installed them.
INSTALLED_APPS += [app for app in ("django_tasks_db", "django_rq") if find_spec(app)]
# The allauth resolver and the DRF view against the real packages (the test extra has both).
ALLAUTH = find_spec("allauth") is not None
if ALLAUTH:
    INSTALLED_APPS += ["allauth", "allauth.account"]
if find_spec("rest_framework") is not None:
    INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
if ALLAUTH:
    # allauth.account refuses to start without it.
    MIDDLEWARE.append("allauth.account.middleware.AccountMiddleware")

ROOT_URLCONF = "tests.urls"
LOGIN_URL = "/accounts/login/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite://:memory:")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not a shared-cache memory database: there concurrent writers fail at once
    # (SQLITE_LOCKED, no busy wait), so the concurrency tests could not run on SQLite. In a file
    # with WAL, a busy timeout and BEGIN IMMEDIATE, threads really run at once (readers beside
    # one writer) and wait for each other's writes the way a production SQLite site does, so a
    # racy claim fails ``make test``. One file per process: nox sessions and other checkouts
    # may run at the same time.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"nomos_billing_tests_{os.getpid()}.sqlite3")
    }
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    }

CACHES = {
    "default": env.cache("CACHE_URL", default="locmemcache://nomos-tests"),
}


def _rq_url() -> str:
    """NOMOS_TEST_RQ_URL, else CACHE_URL's Redis with the next db index: the suite flushes the
    cache db between tests, which must not empty a queue a worker is reading."""
    explicit = env.str("NOMOS_TEST_RQ_URL", default="")
    if explicit:
        return explicit
    parts = urlsplit(env.str("CACHE_URL", default="redis://127.0.0.1:6379/0"))
    if not parts.scheme.startswith("redis"):
        return "redis://127.0.0.1:6379/13"
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


RQ_QUEUES = {"default": {"URL": _rq_url()}}

# pytest-django's live_server serves static files under STATIC_URL; without it, every request fails.
STATIC_URL = "/static/"

# Django 6.1 configures mail as MAILERS and warns without it; the test runner swaps every
# mailer for the locmem one (mail.outbox).
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Values the sandbox fixture also uses; tests point API_BASE_URL at a live sandbox.
NOMOS_BILLING = {
    "CLIENT_ID": "sandbox-client",
    "CLIENT_SECRET": "sandbox-secret",
    "WEBHOOK_SECRETS": ["whsec_test_new", "whsec_test_old"],
    "API_BASE_URL": "http://127.0.0.1:9",
    "TIMEOUT": (1.0, 2.0),
    "MAX_RETRY_WAIT": 2,
    # The outage breaker would carry one test's outage into the next call; its own tests
    # (test_breaker.py) switch it on.
    "BREAKER_FAILURES": 0,
    # Nomos' rate limit on our side (api_rate) would slow every test that talks to the sandbox;
    # its own tests (test_api_rate.py) switch it on.
    "API_RATE_LIMIT": None,
    # The links in confirmation mails of held links.
    "SITE_URL": "http://testserver",
    # The sandbox's portal and checkout hosts (nomos_billing.sandbox.hosts), as a site that
    # develops against the sandbox configures them: the package's defaults accept Nomos'
    # domains only, and a loopback API relaxes the scheme, never these lists.
    "PORTAL_HOSTS": [".customerportal.localhost"],
    "CHECKOUT_HOSTS": [".checkout.localhost"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"nomos_billing": {"handlers": ["null"], "level": "DEBUG", "propagate": True}},
}
