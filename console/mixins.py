"""The HTML counterpart of the API base viewset: login required, then console.permissions."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.mixins import LoginRequiredMixin

from console import roles
from console.permissions import reachable, require, require_list, restrict


class ConsoleViewMixin(LoginRequiredMixin):
    """Concrete views set `permission_action` (and `queryset` for lists and objects)."""

    permission_action: str = roles.VIEW

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        self.authorize(request, kwargs)
        return super().dispatch(request, *args, **kwargs)

    def authorize(self, request, kwargs) -> None:
        """Raise unless the user may open this page at all (objects are checked again one by one)."""
        model = getattr(getattr(self, "queryset", None), "model", None)
        if model is not None and not self.kwargs_identify_object(kwargs):
            require_list(request.user, self.permission_action, model)
        elif model is not None:
            # One object: users who can see none of this kind get 403; scoped users go on to the object check.
            require_list(request.user, roles.VIEW, model)
        else:
            require(request.user, self.permission_action)

    @staticmethod
    def kwargs_identify_object(kwargs) -> bool:
        return "pk" in kwargs or "slug" in kwargs

    def get_queryset(self):
        action = roles.VIEW if self.kwargs_identify_object(self.kwargs) else self.permission_action
        parent = getattr(super(), "get_queryset", None)
        queryset = parent() if parent else self.queryset.all()
        return restrict(queryset, self.request.user, action)

    def visible_object(self, pk):
        """The object with this pk if the user may view it and hold this view's action on it (else
        403); a hidden one raises ObjectHidden (an audited 404), a missing one a plain 404."""
        obj = reachable(self.get_queryset(), self.request.user, self.permission_action, pk)
        require(self.request.user, self.permission_action, obj)
        return obj

    def get_object(self, queryset=None):
        obj = super().get_object(queryset)
        require(self.request.user, self.permission_action, obj)
        return obj


def search_context(request) -> dict:
    """The `?q=` search of a list page: the box's value, and the query string the pager keeps."""
    query = request.GET.get("q", "")
    return {"query": query, "filter_query": urlencode({"q": query}) if query else ""}
