"""The lead form: what Nomos needs to pre-fill a checkout for a signed-in user."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from .linking import user_reference

#: Nomos rejects an estimated usage below 100 kWh; above this a typo is more likely than a
#: household or small business.
MIN_USAGE = 100
MAX_USAGE = 1_000_000
DEFAULT_USAGE = 2500

#: Where Nomos' ``errors[].field`` of a ``POST /leads`` answer shows on our form.
NOMOS_FIELDS = {"address.zip": "zip_code", "meter.estimated_usage": "estimated_usage"}
#: Our own words for the business errors a user can fix (Nomos' ``message`` is English only).
NOMOS_ERROR_MESSAGES = {
    "unserviceable_zip": _("We cannot supply electricity to this postcode yet."),
    "too_small": _("This value is too small."),
    "too_big": _("This value is too large."),
}
GENERIC_FIELD_ERROR = _("Please check this value.")
GENERIC_FORM_ERROR = _("Your details could not be accepted. Please check them and try again.")
TRY_AGAIN_ERROR = _(
    "We could not prepare your switch just now. Your details are kept below: please send "
    "the form again in a moment."
)


class LeadForm(forms.Form):
    # [0-9], not \d: \d accepts Arabic-Indic and other Unicode digits. The pattern alone
    # checks the length: min_length/max_length validators would add a second error ("Ensure
    # this value has at least 5 characters") to the same mistake. maxlength stays in the
    # widget for the browser.
    zip_code = forms.RegexField(
        label=_("Postcode"),
        regex=r"^[0-9]{5}\Z",
        strip=True,
        error_messages={"invalid": _("Enter a German postcode of 5 digits.")},
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "postal-code",
                "maxlength": "5",
            }
        ),
    )
    estimated_usage = forms.IntegerField(
        label=_("Estimated yearly usage (kWh)"),
        min_value=MIN_USAGE,
        max_value=MAX_USAGE,
        initial=DEFAULT_USAGE,
        help_text=_("A household of two uses about 2,500 kWh a year."),
    )

    def add_nomos_errors(self, errors: list[dict[str, str]]) -> None:
        """Show the business errors of a refused ``POST /leads`` on the fields they name,
        keeping what the user typed (the form stays bound)."""
        shown: set[tuple[str | None, str]] = set()
        for entry in errors:
            field = NOMOS_FIELDS.get(entry.get("field", ""))
            message = NOMOS_ERROR_MESSAGES.get(entry.get("code", ""))
            if field is None:
                message = message or GENERIC_FORM_ERROR
            text = str(message or GENERIC_FIELD_ERROR)
            if (field, text) not in shown:  # one mistake, one message
                shown.add((field, text))
                self.add_error(field, text)
        if not shown:
            self.add_error(None, GENERIC_FORM_ERROR)

    def add_try_again(self) -> None:
        """Say that sending the form again may work (an outage, not the user's input)."""
        self.add_error(None, TRY_AGAIN_ERROR)

    def lead_payload(self, *, plan: str, user: Any, user_key: str) -> dict[str, Any]:
        """The ``POST /leads`` body (the ``InsertLead`` schema) for this form and ``user``."""
        data = self.cleaned_data
        customer: dict[str, str] = {"type": "person"}
        email_field = (
            user.get_email_field_name() if hasattr(user, "get_email_field_name") else "email"
        )
        # Nomos requires at least one character where a name is given: leave out empty ones.
        for key, value in (
            ("email", getattr(user, email_field, "")),
            ("first_name", getattr(user, "first_name", "")),
            ("last_name", getattr(user, "last_name", "")),
        ):
            if isinstance(value, str) and value.strip():
                customer[key] = value.strip()[:100] if key != "email" else value.strip()
        return {
            "plan": plan,
            "address": {"zip": data["zip_code"]},
            "meter": {"estimated_usage": data["estimated_usage"]},
            "customer": customer,
            # Our own attribution, signed: a bare id would be as forgeable here as anywhere.
            "metadata": {user_key: user_reference(user)},
        }
