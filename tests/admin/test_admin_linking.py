"""Linking by hand needs a permission of its own, on every path, and leaves a trail.

Each action that makes, undoes or decides a link (Link to a user, Unlink, Confirm and Reject on
held links) is tried as each operator of ``tests.admin_roles``: the action itself, its
intermediate form and its final POST. Only the permission's holders (and superusers) change
anything, and each change is a ``LogEntry`` naming the staff member.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from nomos_billing.models import NomosCustomer, NomosLinkClaim
from tests.admin_roles import ROLES, operator_client, refused

pytestmark = pytest.mark.django_db

CUSTOMERS = reverse("admin:nomos_billing_nomoscustomer_changelist")
CLAIMS = reverse("admin:nomos_billing_nomoslinkclaim_changelist")

ALLOWED = {"superuser", "staff-link", "staff-link-users"}
#: Who may search users, so gets the autocomplete instead of a typed id or login name.
SEES_USERS = {"superuser", "staff-link-users"}


#: The shared roles, and one that also sees the site's users: linking by hand searches them
#: (the admin's autocomplete).
LINKING_ROLES = {
    **ROLES,
    "staff-link-users": (True, False, [*ROLES["staff-link"][2], "view_user"]),
}


@pytest.fixture(params=LINKING_ROLES.keys())
def role(request: Any, django_user_model: Any) -> tuple[str, Client, Any]:
    return request.param, *operator_client(django_user_model, request.param, LINKING_ROLES)


@pytest.fixture
def customer_and_user(django_user_model: Any) -> tuple[NomosCustomer, Any]:
    user = django_user_model.objects.create_user("target", "target@example.com", "pw")
    return NomosCustomer.objects.create(customer_id="cus_hand", email="c@example.com"), user


def logged(operator: Any, obj: Any) -> list[str]:
    return [
        e.change_message
        for e in LogEntry.objects.filter(user=operator, object_id=str(obj.pk))
    ]


def test_link_to_user_action_its_form_and_its_post(role, customer_and_user):
    name, client, operator = role
    customer, user = customer_and_user
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}

    form = client.post(CUSTOMERS, selected)
    final = client.post(CUSTOMERS, {**selected, "apply": "1", "user": user.username})

    customer.refresh_from_db()
    if name in ALLOWED:
        assert form.status_code == 200 and b'name="user"' in form.content
        assert final.status_code == 302
        assert (customer.user, customer.linked_by) == (user, "admin")
        assert any("Linked to user" in m for m in logged(operator, customer))
    else:
        refused(name, form)
        refused(name, final)
        assert customer.user is None
        assert not LogEntry.objects.exists()


def test_unlink_action_and_its_confirmation(role, customer_and_user):
    name, client, operator = role
    customer, user = customer_and_user
    NomosCustomer.objects.filter(pk=customer.pk).update(user=user, linked_by="by_lead")
    selected = {"action": "unlink", "_selected_action": [customer.pk]}

    ask = client.post(CUSTOMERS, selected)
    final = client.post(CUSTOMERS, {**selected, "confirm": "yes"})

    customer.refresh_from_db()
    if name in ALLOWED:
        assert ask.status_code == 200
        assert final.status_code == 302
        assert customer.user is None
        assert any("Unlinked from user" in m for m in logged(operator, customer))
    else:
        refused(name, ask)
        refused(name, final)
        assert customer.user == user


@pytest.mark.parametrize("action", ["confirm_claims", "reject_claims"])
def test_deciding_a_held_link(role, customer_and_user, action):
    name, client, operator = role
    customer, user = customer_and_user
    claim = NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")

    response = client.post(CLAIMS, {"action": action, "_selected_action": [claim.pk]})

    claim.refresh_from_db()
    customer.refresh_from_db()
    if name in ALLOWED:
        assert response.status_code == 302
        if action == "confirm_claims":
            assert claim.status == "confirmed"
            assert (customer.user, customer.linked_by) == (user, "admin")
        else:
            assert claim.status == "rejected"
            assert customer.user is None
        assert claim.decided_by == f"admin:{operator.pk}"
        assert logged(operator, claim) and logged(operator, customer)
    else:
        refused(name, response)
        assert claim.status == "pending" and customer.user is None
        assert not LogEntry.objects.exists()


def test_the_action_menu_offers_linking_only_to_the_permissions_holders(role):
    name, client, _ = role
    NomosCustomer.objects.create(customer_id="cus_menu")
    response = client.get(CUSTOMERS)
    if name in ("not-staff", "staff-none"):
        refused(name, response)
        return
    assert response.status_code == 200
    text = response.content.decode()
    assert ('value="link_to_user"' in text) == (name in ALLOWED)
    assert ('value="unlink"' in text) == (name in ALLOWED)


def test_a_change_form_post_cannot_move_a_customer(role, customer_and_user):
    _, client, _ = role
    customer, user = customer_and_user
    url = reverse("admin:nomos_billing_nomoscustomer_change", args=[customer.pk])
    client.post(url, {"user": user.pk, "customer_id": "cus_hand", "linked_by": "admin"})
    customer.refresh_from_db()
    assert customer.user is None


def test_rejected_claim_is_never_raised_again(customer_and_user, admin_client, nomos):
    from nomos_billing import linking

    customer, user = customer_and_user
    NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead",
                                  status="rejected")
    assert linking.hold(customer, user, "by_lead") is False
    assert NomosLinkClaim.objects.get().status == "rejected"


def test_the_claim_page_never_shows_the_confirmation_secret(admin_client, customer_and_user):
    customer, user = customer_and_user
    claim = NomosLinkClaim.objects.create(
        customer=customer, user=user, rule="by_lead", nonce="secret-nonce-value"
    )
    for url in (CLAIMS, reverse("admin:nomos_billing_nomoslinkclaim_change", args=[claim.pk])):
        response = admin_client.get(url)
        assert response.status_code == 200
        assert b"secret-nonce-value" not in response.content


AUTOCOMPLETE = "/admin/autocomplete/"


def search_users(client: Client, term: str) -> Any:
    return client.get(AUTOCOMPLETE, {"app_label": "nomos_billing", "model_name": "nomoscustomer",
                                     "field_name": "user", "term": term})


def test_linking_by_hand_searches_users_where_the_operator_may_see_them(role, customer_and_user):
    name, client, operator = role
    customer, user = customer_and_user
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}

    form = client.post(CUSTOMERS, selected)
    found = search_users(client, "targ")

    if name not in ALLOWED:
        refused(name, form)
        assert customer.user is None
        return
    html = form.content.decode()
    if name in SEES_USERS:
        assert 'class="admin-autocomplete' in html and 'data-field-name="user"' in html
        assert "admin/js/autocomplete.js" in html
        assert found.status_code == 200
        assert [r["id"] for r in found.json()["results"]] == [str(user.pk)]
        # What the widget posts: the chosen user's id.
        final = client.post(CUSTOMERS, {**selected, "apply": "1", "user": str(user.pk)})
        assert final.status_code == 302
        customer.refresh_from_db()
        assert (customer.user, customer.linked_by) == (user, "admin")
        assert any("Linked to user" in m for m in logged(operator, customer))
    else:
        # May link, may not list users: Django's autocomplete refuses them, so they type.
        assert found.status_code == 403
        assert "admin-autocomplete" not in html
        assert 'type="text" name="user"' in html



@pytest.mark.parametrize("typed", ["9223372036854775808", "9" * 40])
def test_a_number_past_any_key_is_nobody_on_both_forms(role, customer_and_user, typed):
    # The typed form (staff who may not see users) and the user search (who may) alike: the
    # form's error, never a 500, and nobody linked.
    name, client, _ = role
    customer, _ = customer_and_user
    page = client.post(CUSTOMERS, {"action": "link_to_user", "apply": "1", "user": typed,
                                   "_selected_action": [customer.pk]})
    if name in ALLOWED:
        assert page.status_code == 200
        assert "No user with this id or login name." in page.content.decode()
        assert ("admin-autocomplete" in page.content.decode()) == (name in SEES_USERS)
    else:
        refused(name, page)
    customer.refresh_from_db()
    assert customer.user is None


def test_without_search_fields_on_the_user_admin_the_form_takes_a_typed_user(
    admin_client, customer_and_user, monkeypatch
):
    from django.contrib import admin
    from django.contrib.auth import get_user_model

    customer, user = customer_and_user
    monkeypatch.setattr(admin.site._registry[get_user_model()], "search_fields", ())
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}

    html = admin_client.post(CUSTOMERS, selected).content.decode()

    assert "admin-autocomplete" not in html and 'type="text" name="user"' in html
    # The help says what to type, not what to search.
    assert "The user&#x27;s id or login name" in html and "Type to search" not in html
    admin_client.post(CUSTOMERS, {**selected, "apply": "1", "user": "target"})
    customer.refresh_from_db()
    assert customer.user == user


def test_a_refused_user_stays_chosen_in_the_search_when_the_form_comes_back(
    admin_client, customer_and_user, django_user_model
):
    customer, _ = customer_and_user
    taken = django_user_model.objects.create(username="taken-one")
    NomosCustomer.objects.create(customer_id="cus_other", user=taken)

    page = admin_client.post(CUSTOMERS, {"action": "link_to_user", "apply": "1",
                                         "_selected_action": [customer.pk], "user": taken.pk})

    html = page.content.decode()
    assert "already linked to a Nomos customer" in html
    # The operator sees whom they chose, to pick another.
    assert re.search(rf'<option value="{taken.pk}" selected>\s*taken-one', html)
    customer.refresh_from_db()
    assert customer.user is None


@pytest.mark.django_db
@pytest.mark.parametrize("typed", ["nobody", "12345"])
def test_an_unknown_typed_user_is_djangos_invalid_choice(typed):
    # The code a site's subclass or template tells errors apart by, as ModelChoiceField's.
    from nomos_billing.admin.forms import LinkUserForm

    form = LinkUserForm(data={"user": typed})
    assert not form.is_valid()
    assert [e.code for e in form.errors.as_data()["user"]] == ["invalid_choice"]


@pytest.mark.parametrize(("action", "what"), [("confirm_claims", "Confirmed"),
                                              ("reject_claims", "Rejected")])
def test_a_decided_held_link_leaves_its_words_on_the_claim_and_the_customer(
    admin_client, admin_user, customer_and_user, action, what
):
    customer, user = customer_and_user
    claim = NomosLinkClaim.objects.create(customer=customer, user=user, rule="by_lead")

    admin_client.post(CLAIMS, {"action": action, "_selected_action": [claim.pk]})

    from django.contrib.contenttypes.models import ContentType

    trail = {
        (ContentType.objects.get_for_id(e.content_type_id).model, e.change_message)
        for e in LogEntry.objects.filter(user=admin_user)
    }
    assert trail == {("nomoslinkclaim", f"{what} by an admin (user {user.pk})."),
                     ("nomoscustomer", f"Held link to user {user.pk} {what.lower()}.")}


def test_the_link_form_explains_its_field_and_names_an_unknown_user(admin_client,
                                                                    customer_and_user):
    customer, _ = customer_and_user
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}

    html = admin_client.post(CUSTOMERS, selected).content.decode()
    assert "Type to search the site&#x27;s users." in html

    unknown = admin_client.post(CUSTOMERS, {**selected, "apply": "1", "user": "nobody-here"})
    assert unknown.status_code == 200
    assert "No user with this id or login name." in unknown.content.decode()
    customer.refresh_from_db()
    assert customer.user is None


def test_the_user_search_says_what_to_type(admin_client, customer_and_user):
    # Django's autocomplete blanks data-placeholder; the form's own words must survive that.
    customer, _ = customer_and_user
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}
    html = admin_client.post(CUSTOMERS, selected).content.decode()
    assert 'data-placeholder="Search users…"' in html
    # Wide enough for an address; and the form's own attributes are kept beside ours: the
    # label points at the field, which is required and described by its help text.
    [select] = re.findall(r'<select name="user"[^>]*>', html)
    assert 'style="width: 30em"' in select
    assert '<label for="id_user">' in html and 'id="id_user"' in select
    assert " required " in select and 'aria-describedby="id_user_helptext"' in select


def test_the_typed_user_field_takes_a_login_name_as_long_as_djangos(
    admin_client, customer_and_user, monkeypatch
):
    from django.contrib import admin
    from django.contrib.auth import get_user_model

    customer, _ = customer_and_user
    monkeypatch.setattr(admin.site._registry[get_user_model()], "search_fields", ())
    selected = {"action": "link_to_user", "_selected_action": [customer.pk]}
    html = admin_client.post(CUSTOMERS, selected).content.decode()
    # 150: AbstractUser.username's max_length; the field is focused for typing at once.
    assert re.search(r'<input type="text" name="user"[^>]* maxlength="150"[^>]* autofocus', html)
