"""gunicorn behind nginx (deploy/nginx.conf) for a site using nomos-billing.

    gunicorn -c deploy/gunicorn.conf.py mysite.wsgi:application

Sync workers: one request at a time each, which is simple and predictable, and safe only behind
a buffering proxy (a slow client never reaches a worker). Values come from the environment so
that one file serves every host.
"""

import os

# Loopback only: nginx is the one client (deploy/nginx.conf's upstream).
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Each sync worker serves one request at a time; a click takes one Nomos call.
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "sync"
# Above WEBHOOK_BUDGET (20 s): a slow Nomos gets our 503, not a killed worker. Nomos waits 30 s.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
# Recycle workers now and then, staggered, so that no leak can grow without bound.
max_requests = 2000
max_requests_jitter = 200
# Trust X-Forwarded-* only from nginx on this host.
forwarded_allow_ips = "127.0.0.1"
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
