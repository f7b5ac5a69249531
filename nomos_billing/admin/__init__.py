"""Admin for Nomos customers, subscriptions, leads and webhook events.

The admin mirrors Nomos, it does not edit it: every field Nomos owns is read-only, nothing can
be added here, and only webhook events can be deleted (pruning). The one thing we own, which
user a customer belongs to, changes only through the explicit *Link to a user* and *Unlink*
actions and the *Confirm* / *Reject* actions on held links, each recorded in the admin history
(``LogEntry``), in ``linked_by``, in the log and by a signal; a POST to the change form cannot
move a customer, whatever it contains. Those actions need the ``link_customer`` permission of
their own ("change" is not enough: a link opens a person's contract and bank details), and a
POST naming one without it is answered 403.

Every list costs the same number of queries however many rows it shows (foreign keys are
``list_select_related``), and the same time at 1M events as at 1k: counts are estimated or
bounded and say so (``counts.CountingPaginator``), searches match ids
exactly (index lookups, not ``LIKE '%...%'`` scans), the latest subscription status is a column
of the customer row (kept by ``sync``), topic choices come from Nomos' documented topics instead
of a ``DISTINCT`` over the table, there is no ``date_hierarchy`` (another ``DISTINCT`` scan) and
every default ordering and filter has an index.
No setting and no secret is shown anywhere; event payloads carry ids only.

The admins, by what they show: ``customers`` (customers and held links), ``subscriptions``
(subscriptions and leads), ``events`` (webhook events and the health page); what they share in
``base``, ``filters`` and ``forms``. Importing this package registers them.
"""

from __future__ import annotations

from . import customers, events, subscriptions  # noqa: F401 - imported to register the admins
