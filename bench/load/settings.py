"""Settings of the site that ``bench/bench_load.py`` serves with gunicorn: PostgreSQL, Redis,
the sandbox, and the task backend of the scenario, all from environment variables."""

from __future__ import annotations

import os

import environ

env = environ.Env()

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "nomos_billing",
    "django_tasks_db",
    "django_rq",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "bench.load.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {**env.db("DATABASE_URL"), "CONN_MAX_AGE": 60}}
CACHES = {"default": env.cache("CACHE_URL")}
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
RQ_QUEUES = {"default": {"URL": env.str("BENCH_RQ_URL")}}
TASKS = {
    "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "rq": {"BACKEND": "django_tasks_rq.RQBackend"},
}
NOMOS_BILLING = {
    "CLIENT_ID": "sandbox-client",
    "CLIENT_SECRET": "sandbox-secret",
    "WEBHOOK_SECRETS": ["whsec_bench"],
    "API_BASE_URL": env.str("BENCH_API_BASE_URL"),
    "TASK_BACKEND": os.environ.get("BENCH_TASK_BACKEND") or None,
    # One user clicks hundreds of times a second: counted, never refused.
    "RATE_LIMITS": {"portal": (100_000, 60)},
    # The sandbox's portal links (nomos_billing.sandbox.hosts).
    "PORTAL_HOSTS": [".customerportal.localhost"],
    # Our own code's throughput, not Nomos' 10 requests/s (api_rate): off unless
    # BENCH_API_RATE_LIMIT names a rate.
    "API_RATE_LIMIT": env.float("BENCH_API_RATE_LIMIT", default=0) or None,
}
LOGGING_CONFIG = None
