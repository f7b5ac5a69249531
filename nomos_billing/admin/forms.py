"""The form of *Link to a user*: a user searched with the autocomplete, or typed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.widgets import AutocompleteSelect
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from ..models import NomosCustomer

#: The largest key a 64-bit signed column holds: a typed id above it names nobody.
MAX_KEY = 2**63 - 1


class UserField(forms.ModelChoiceField):
    """A user by the autocomplete's id, or typed: a login name, else a numeric id."""

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        User = get_user_model()  # noqa: N806
        queryset = self.queryset if self.queryset is not None else User._default_manager.all()
        user = queryset.filter(**{User.USERNAME_FIELD: text}).first()
        # ASCII digits only (never a lenient number), and no more than a 64-bit key holds: a
        # database cannot bind more (SQLite raises OverflowError).
        if user is None and text.isascii() and text.isdigit() and len(text) <= len(str(MAX_KEY)):
            pk = int(text)
            user = queryset.filter(pk=pk).first() if pk <= MAX_KEY else None
        if user is None:
            raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice")
        return user


class UserAutocomplete(AutocompleteSelect):
    """Django admin's user autocomplete (the user admin's ``search_fields``)."""

    def build_attrs(self, base_attrs: dict[str, Any], extra_attrs: Any = None) -> dict[str, Any]:
        attrs = super().build_attrs(base_attrs, extra_attrs)
        # Django blanks data-placeholder (select2 clears only with one); ours says what to type.
        attrs["data-placeholder"] = base_attrs.get("data-placeholder", "")
        return attrs

    def optgroups(self, name: str, value: Any, attr: Any = None) -> Any:
        try:
            return super().optgroups(name, value, attr)
        except (ValueError, ValidationError, OverflowError):
            # A login name posted without the browser's widget is no id to show as chosen, nor
            # is a number past what the database can bind.
            return super().optgroups(name, [], attr)


class LinkUserForm(forms.Form):
    """The user for *Link to a user*: searched with ``autocomplete`` (a widget for the user
    admin's autocomplete view), else typed as an id or login name."""

    def __init__(self, *args: Any, autocomplete: forms.Widget | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        User = get_user_model()  # noqa: N806
        self.fields["user"] = UserField(
            queryset=User._default_manager.all(),
            label=_("User"),
            widget=autocomplete or forms.TextInput(attrs={"maxlength": 150, "autofocus": True}),
            help_text=_("Type to search the site's users.")
            if autocomplete
            else _("The user's id or login name (username or e-mail, per the user model)."),
            error_messages={"invalid_choice": _("No user with this id or login name.")},
        )

    def clean_user(self) -> Any:
        user = self.cleaned_data["user"]
        if not getattr(user, "is_active", True):
            # As every other path (the resolvers, a held link's confirmation): never an
            # account that cannot sign in.
            raise forms.ValidationError(_("This user is inactive."))
        if NomosCustomer.objects.filter(user=user).exists():
            raise forms.ValidationError(_("This user is already linked to a Nomos customer."))
        return user
