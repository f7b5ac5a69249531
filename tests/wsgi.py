"""The WSGI application of the suite's settings, for the gunicorn servers tests start."""

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
