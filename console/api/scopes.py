"""The API's default permission: an authenticated user, through a token whose scope covers the request."""

from __future__ import annotations

from rest_framework.permissions import IsAuthenticated

from console.permissions import require_token_scope


class AuthenticatedWithinTokenScope(IsAuthenticated):
    """IsAuthenticated, and console.permissions.require_token_scope for token requests (a refusal is audited)."""

    def has_permission(self, request, view) -> bool:
        if not super().has_permission(request, view):
            return False
        require_token_scope(request.user, request.auth, request.method)
        return True
