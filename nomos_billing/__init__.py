"""Connect a Django site to Nomos: customers, webhooks, portal links, and a local sandbox."""

__version__ = "0.1.0"
