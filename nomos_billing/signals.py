"""Signals a site can connect to.

- ``webhook_received(sender=WebhookEvent, event=WebhookEvent)``: a verified delivery was
  recorded (sent once per event id, not per duplicate delivery).
- ``webhook_processed(sender=WebhookEvent, event=WebhookEvent)``: processing succeeded; for
  ``invoice.*`` and ``meter_order.*`` topics this is where a site reacts.
- ``customer_linked(sender=NomosCustomer, customer=NomosCustomer, user=User, resolver=str)``:
  ``resolver`` is the resolver's name (``by_lead``, ``by_metadata``...), ``confirmed`` (the
  customer's mailbox confirmed a held link) or ``admin``.
- ``customer_link_held(sender=NomosCustomer, customer=NomosCustomer, user=User, rule=str,
  claim=NomosLinkClaim)``: a lead or signed reference named ``user``, but the customer's
  e-mail address is not theirs; nobody is linked until the customer's mailbox (or an operator)
  confirms. The package's own receiver mails the customer (``confirmation.py``).
- ``customer_link_rejected(sender=NomosCustomer, customer=NomosCustomer, user=User,
  claim=NomosLinkClaim, rejected_by=str)``: an operator rejected a held link.
- ``customer_unlinked(sender=NomosCustomer, customer=NomosCustomer, user=User,
  unlinked_by=str)``: an operator removed the link (``unlinked_by`` is ``admin``).
- ``subscription_status_changed(sender=NomosSubscription, subscription=NomosSubscription,
  previous=str | None, status=str)``: ``previous`` is None for a subscription we had not seen.
"""

from __future__ import annotations

from django.dispatch import Signal

webhook_received = Signal()
webhook_processed = Signal()
customer_linked = Signal()
customer_unlinked = Signal()
customer_link_held = Signal()
customer_link_rejected = Signal()
subscription_status_changed = Signal()
