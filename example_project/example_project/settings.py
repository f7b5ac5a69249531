"""Settings of the example site, read from the environment with django-environ.

Every variable is optional (``manage.py check`` passes with none set) and is listed and explained
in ``.env.example``; copy it to ``.env`` beside ``manage.py`` to change them. Without Nomos
credentials the site talks to the local sandbox (``python -m nomos_billing.sandbox``); put real
``NOMOS_*`` values in ``.env`` and it talks to Nomos with no code change.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import django
import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    # Variables already set in the process environment win over the file.
    env.read_env(BASE_DIR / ".env")

# -- Django --------------------------------------------------------------------------------

# Development defaults: a real deployment sets DJANGO_DEBUG=False and its own secret key.
DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="example-project-dev-only-not-secret")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # demo_app first: its templates/nomos_billing/base.html puts the package's pages into
    # the demo's layout.
    "demo_app",
    "nomos_billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions, before common: picks en or de from the session or Accept-Language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Persistent connections: a new PostgreSQL connection per request cost 4x the throughput in
# nomos-billing's benchmarks. Health checks replace a connection the server dropped (restart,
# idle timeout) instead of failing the request that finds it dead.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=600))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that hangs must cost a request seconds, not gunicorn's 30 s and a killed
    # worker: a connect timeout (libpq counts whole seconds, at least 2) and a statement
    # timeout (ms), so a click shows the 503 page and a webhook answers 503 (Nomos redelivers).
    # Run a long migration with DB_STATEMENT_TIMEOUT_MS=0.
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=3))
    _statement_timeout = env.int("DB_STATEMENT_TIMEOUT_MS", default=5000)
    _options.setdefault("options", f"-c statement_timeout={_statement_timeout}")
CACHES = {
    # The Nomos access token lives here; use Redis (redis://...) with several workers.
    "default": env.cache("CACHE_URL", default="locmemcache://example-project"),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
USE_I18N = True
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="Europe/Berlin")
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# -- Nomos ---------------------------------------------------------------------------------

# The defaults are the sandbox's published, fake credentials (see .env.example).
NOMOS_BILLING = {
    "API_BASE_URL": env.str("NOMOS_API_BASE_URL", default="http://127.0.0.1:8765"),
    "CLIENT_ID": env.str("NOMOS_CLIENT_ID", default="sandbox-client"),
    "CLIENT_SECRET": env.str("NOMOS_CLIENT_SECRET", default="sandbox-secret"),
    # Newest first; during a rotation list the new secret, then the old one.
    "WEBHOOK_SECRETS": env.list("NOMOS_WEBHOOK_SECRETS", default=["whsec_sandbox"]),
    "LINK_BY_EMAIL": env.bool("NOMOS_LINK_BY_EMAIL", default=False),
    "PLAN_ID": env.str("NOMOS_PLAN_ID", default="") or None,
    "SIGNUP_URL": env.str("NOMOS_SIGNUP_URL", default="") or None,
    # The plan's hosted checkout ({% nomos_checkout_url %}), e.g. https://lumio.checkout.energy/
    "CHECKOUT_URL": env.str("NOMOS_CHECKOUT_URL", default="") or None,
    # This site's address, for the link in a held link's confirmation mail.
    "SITE_URL": env.str("NOMOS_SITE_URL", default="http://127.0.0.1:8000"),
    # Nomos' 10 requests/s for the whole site, clicks first; 0 switches our side off.
    "API_RATE_LIMIT": env.float("NOMOS_API_RATE_LIMIT", default=10) or None,
    # Hosts a minted portal or checkout link may point at (set below).
}
# Unset: Nomos' own domains (*.customerportal.energy, *.checkout.energy), or against the
# local sandbox its hosts (nomos_billing.sandbox.hosts: PORTAL_HOSTS, CHECKOUT_HOSTS).
_SANDBOX_API = urlsplit(NOMOS_BILLING["API_BASE_URL"]).hostname in ("127.0.0.1", "localhost", "::1")
NOMOS_BILLING["PORTAL_HOSTS"] = env.list(
    "NOMOS_PORTAL_HOSTS", default=[".customerportal.localhost"] if _SANDBOX_API else []
) or None
NOMOS_BILLING["CHECKOUT_HOSTS"] = env.list(
    "NOMOS_CHECKOUT_HOSTS", default=[".checkout.localhost"] if _SANDBOX_API else []
) or None

# Confirmation mails of held links: printed to the console unless EMAIL_BACKEND names another
# backend. Django 6.1 configures mail as MAILERS (EMAIL_BACKEND is deprecated there).
_MAIL_BACKEND = (
    env.str("EMAIL_BACKEND", default="") or "django.core.mail.backends.console.EmailBackend"
)
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": _MAIL_BACKEND}}
else:
    EMAIL_BACKEND = _MAIL_BACKEND

# NOMOS_TASKS=db: webhooks are processed by `manage.py db_worker` (nomos-billing[tasks-db]);
# NOMOS_TASKS=rq: by `manage.py rqworker default --job-class django_tasks_rq.Job` on Redis
# (nomos-billing[tasks-rq], RQ_URL). Empty: inside the webhook request.
NOMOS_TASKS = env.str("NOMOS_TASKS", default="")
if NOMOS_TASKS == "db":
    INSTALLED_APPS += ["django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    NOMOS_BILLING["TASK_BACKEND"] = "default"
elif NOMOS_TASKS == "rq":
    INSTALLED_APPS += ["django_rq"]
    RQ_QUEUES = {"default": {"URL": env.str("RQ_URL", default="redis://127.0.0.1:6379/0")}}
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend"}}
    NOMOS_BILLING["TASK_BACKEND"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "nomos_billing": {
            "handlers": ["console"],
            "level": env.str("NOMOS_LOG_LEVEL", default="INFO"),
        },
    },
}
