"""The base for every API viewset: permissions from console.permissions, nothing inline.

A concrete viewset declares `queryset` and, where the defaults do not fit, `action_permissions`
(DRF action -> console action). Lists are restricted with `restrict`; objects outside the user's
view are 404; objects seen but not allowed are 403.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import viewsets
from rest_framework.exceptions import ValidationError

from console import roles
from console.api.parsers import REFUSAL, has_unstorable_text
from console.permissions import ObjectHidden, granted_count, require, require_list, restrict

DEFAULT_ACTIONS = {
    "list": roles.VIEW,
    "retrieve": roles.VIEW,
    "create": None,  # set per viewset: creating needs a real action
    "update": None,
    "partial_update": None,
    "destroy": None,
}


# Query parameters that neither filter nor narrow a list.
UNFILTERED_PARAMS = frozenset({"page", "page_size", "ordering", "format"})


class ConsoleViewSetMixin:
    action_permissions: dict[str, str | None] = {}
    object_actions = {"retrieve", "update", "partial_update", "destroy"}
    # True where the list is the model's rows restricted by grants and nothing else (get_queryset adds no filter):
    # its unfiltered total for a grant-only user is then counted from the grants (console.permissions.granted_count).
    count_from_grants = False

    def known_count(self) -> int | None:
        """The list's total when known cheaper than COUNT(*) over it (console.api.pagination), else None."""
        if not self.count_from_grants or self.action != "list":
            return None
        if any(name not in UNFILTERED_PARAMS for name in self.request.query_params):
            return None
        return granted_count(self.request.user, self.queryset.model, self.console_action())

    def console_action(self) -> str:
        merged = {**DEFAULT_ACTIONS, **self.action_permissions}
        action = merged.get(self.action)
        if action is None:
            raise NotImplementedError(f"{type(self).__name__} declares no console action for '{self.action}'")
        return action

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        # Bodies are checked by the parsers (console.api.parsers); a query parameter reaches lookups directly.
        unstorable = [name for name, values in request.query_params.lists() if has_unstorable_text([name, *values])]
        if unstorable:
            raise ValidationError({name: [REFUSAL] for name in unstorable})
        if self.action is None or request.method == "OPTIONS":
            return
        action = self.console_action()
        if self.action == "list":
            require_list(request.user, action, self.queryset.model)
        elif self.detail:
            # Users who can see no object of this kind get 403; scoped users go on to the object check.
            require_list(request.user, roles.VIEW, self.queryset.model)
        elif self.action not in self.object_actions and not self.detail:
            require(request.user, action)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return super().get_queryset().none()
        # Detail routes look up within what the user may view, so an unseen object is a 404.
        return restrict(super().get_queryset(), self.request.user, roles.VIEW if self.detail else self.console_action())

    def get_object(self):
        try:
            obj = super().get_object()
        except Http404 as not_found:
            # Outside what the user may view: if it exists, the 404 is a denial worth auditing.
            lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
            try:
                hidden = self.queryset.model._default_manager.filter(**{self.lookup_field: lookup}).first()
            except (TypeError, ValueError, DjangoValidationError):
                raise not_found from None  # no object can have that id ("true", "1e3"): a plain 404
            if hidden is not None:
                raise ObjectHidden(self.request.user, self.console_action(), hidden) from None
            raise
        require(self.request.user, self.console_action(), obj)
        return obj


class ConsoleModelViewSet(ConsoleViewSetMixin, viewsets.ModelViewSet):
    pass


class ConsoleReadOnlyViewSet(ConsoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    pass
