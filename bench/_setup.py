"""Shared set-up for the benchmarks: Django configured in-process (SQLite in memory unless
DATABASE_URL is set) and a seeded sandbox on a loopback port. Not a benchmark itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
WEBHOOK_SECRET = "whsec_bench"


def setup_django(api_base_url: str = "http://127.0.0.1:9", **nomos: Any) -> None:
    import django
    import environ
    from django.conf import settings

    env = environ.Env()
    database = env.db("DATABASE_URL", default="sqlite://:memory:")
    if database["ENGINE"].endswith("sqlite3") and database["NAME"] == ":memory:":
        # Threads (the sandbox, live servers) share one in-memory database this way.
        database["NAME"] = "file:nomos_bench?mode=memory&cache=shared"
        database.setdefault("OPTIONS", {})["uri"] = True
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes",
                        "django.contrib.sessions", "django.contrib.admin",
                        "django.contrib.messages", "nomos_billing"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.middleware.common.CommonMiddleware",
                    "django.middleware.csrf.CsrfViewMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware"],
        ROOT_URLCONF="tests.urls",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True, "OPTIONS": {"context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages"]}}],
        DATABASES={"default": database},
        CACHES={"default": env.cache("CACHE_URL", default="locmemcache://bench"),
                # The per-user limits' counters apart, so that token-cache reads stay countable.
                "ratelimit": env.cache("CACHE_URL", default="locmemcache://bench-ratelimit")},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        NOMOS_BILLING={
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
            "API_BASE_URL": api_base_url,
            # One user clicks thousands of times: counted (its cost is in the figures), never
            # refused.
            "RATE_LIMITS": {"portal": (100_000, 60)},
            "RATE_LIMIT_CACHE": "ratelimit",
            # The sandbox's portal links (nomos_billing.sandbox.hosts).
            "PORTAL_HOSTS": [".customerportal.localhost"],
            # Our own code's cost, not Nomos' 10 requests/s (api_rate): off unless asked for.
            "API_RATE_LIMIT": None,
            **nomos,
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def environment() -> str:
    import platform

    import django

    db = os.environ.get("DATABASE_URL", "sqlite (memory)").split("@")[-1]
    return (f"Python {platform.python_version()}, Django {django.get_version()}, "
            f"database {db}, {os.cpu_count()} CPUs")
