"""Accounts pages: users and roles, grants, API tokens, credentials (input parsed, permission asked, one service)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from console import permissions, roles
from console.accounts import selectors
from console.accounts.forms import (
    CredentialForm,
    GrantForm,
    PasswordChangeForm,
    PasswordResetForm,
    TokenCreateForm,
    UserAccessForm,
    UserCreateForm,
)
from console.accounts.models import Credential
from console.accounts.services import access, credentials, passwords, tokens
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin, search_context
from console.permissions import can, require

User = get_user_model()

NEW_TOKEN_SESSION_KEY = "accounts.new_token"  # noqa: S105  (a session key; the value waits there to be shown once)


class UserListView(ConsoleViewMixin, ListView):
    permission_action = roles.MANAGE_USERS
    template_name = "accounts/users.html"
    paginate_by = 25

    def get_queryset(self):
        users = selectors.user_list(user=self.request.user)
        query = self.request.GET.get("q", "").strip()
        return users.filter(username__icontains=query) if query else users

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or UserCreateForm()
        context.update(search_context(self.request))
        context["rows"] = [
            (u, [roles.ROLE_LABELS[r] for r in permissions.user_roles(u)]) for u in context["object_list"]
        ]
        return context

    def post(self, request):
        form = UserCreateForm(request.POST)
        if form.is_valid():
            try:
                user = access.user_create(
                    actor=request.user, role_names=form.cleaned_data.pop("roles"), **form.cleaned_data
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("User %(name)s created.") % {"name": user.username})
                return redirect("users")
        self.object_list = self.get_queryset()
        return render(request, self.template_name, self.get_context_data(form=form), status=400)


class UserAccessView(ConsoleViewMixin, View):
    permission_action = roles.MANAGE_USERS
    template_name = "accounts/user_access.html"

    def _render(self, request, person, form, status=200, reset_form=None):
        grants = [g for g in selectors.grant_list(user=request.user) if g["user"] == person.username]
        context = {
            "person": person,
            "form": form,
            "grants": grants,
            "reset_form": reset_form or PasswordResetForm(),
            "must_change": selectors.password_change_required(person),
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request, pk):
        person = get_object_or_404(User, pk=pk)
        form = UserAccessForm(initial={"roles": permissions.user_roles(person), "is_active": person.is_active})
        return self._render(request, person, form)

    def post(self, request, pk):
        person = get_object_or_404(User, pk=pk)
        form = UserAccessForm(request.POST)
        if form.is_valid():
            try:
                access.user_update(
                    actor=request.user,
                    user=person,
                    role_names=form.cleaned_data["roles"],
                    is_active=form.cleaned_data["is_active"],
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Access of %(name)s saved.") % {"name": person.username})
                return redirect("user-access", pk=person.pk)
        return self._render(request, person, form, status=400)


class UserPasswordResetView(UserAccessView):
    """An admin sets a temporary password (POST from the user's access page)."""

    def get(self, request, pk):
        return redirect("user-access", pk=pk)

    def post(self, request, pk):
        person = get_object_or_404(User, pk=pk)
        form = PasswordResetForm(request.POST)
        if form.is_valid():
            try:
                passwords.password_reset(
                    actor=request.user,
                    user=person,
                    new_password=form.cleaned_data["password"],
                    revoke_tokens=form.cleaned_data["revoke_tokens"],
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                if person.pk == request.user.pk:
                    update_session_auth_hash(request, person)
                messages.success(
                    request,
                    _("Temporary password set: %(name)s must change it at the next login.") % {"name": person.username},
                )
                return redirect("user-access", pk=person.pk)
        access_form = UserAccessForm(initial={"roles": permissions.user_roles(person), "is_active": person.is_active})
        return self._render(request, person, access_form, status=400, reset_form=form)


class PasswordChangeView(LoginRequiredMixin, View):
    """A person changes their own password (every signed-in person; the only page left to one who must)."""

    template_name = "accounts/password_change.html"

    def _render(self, request, form, status=200):
        context = {
            "form": form,
            "must_change": selectors.password_change_required(request.user),
            "next": request.POST.get("next") or request.GET.get("next", ""),
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request):
        return self._render(request, PasswordChangeForm())

    def post(self, request):
        form = PasswordChangeForm(request.POST)
        if form.is_valid():
            try:
                passwords.password_change(
                    actor=request.user,
                    current_password=form.cleaned_data["current_password"],
                    new_password=form.cleaned_data["new_password"],
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                update_session_auth_hash(request, request.user)  # this session stays signed in
                messages.success(request, _("Your password was changed."))
                target = request.POST.get("next", "")
                safe = url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure())
                return redirect(target if target and safe else "dashboard")
        return self._render(request, form, status=400)


class GrantsView(ConsoleViewMixin, View):
    permission_action = roles.MANAGE_USERS
    template_name = "accounts/grants.html"

    def _render(self, request, form, status=200):
        return render(
            request,
            self.template_name,
            {"form": form, "grants": selectors.grant_list(user=request.user)},
            status=status,
        )

    def get(self, request):
        return self._render(request, GrantForm())

    def post(self, request):
        form = GrantForm(request.POST)
        revoke = request.POST.get("op") == "revoke"
        if form.is_valid():
            data = form.cleaned_data
            service = access.object_revoke if revoke else access.object_grant
            try:
                target = access.grant_target(
                    target_type=data["target_type"], target_id=data["target_id"], target_name=data["target_name"]
                )
                service(actor=request.user, grantee=data["user"] or data["team"], action=data["action"], target=target)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Grant revoked.") if revoke else _("Grant added."))
                return redirect("grants")
        return self._render(request, form, status=400)


class TokenListView(ConsoleViewMixin, View):
    """Personal tokens. Creating one redirects (post/redirect/get): a reload never creates a second token, and
    the value is shown once, on the next page, from the session (popped as it is shown)."""

    template_name = "accounts/tokens.html"

    def _render(self, request, form, new_token=None, status=200):
        my_tokens = selectors.token_list(user=request.user, owner=request.user)
        response = render(
            request, self.template_name, {"form": form, "tokens": my_tokens, "new_token": new_token}, status=status
        )
        if new_token:  # a page carrying a secret is never kept by a cache (nor shown again by Back)
            add_never_cache_headers(response)
        return response

    def get(self, request):
        return self._render(request, TokenCreateForm(), new_token=request.session.pop(NEW_TOKEN_SESSION_KEY, None))

    def post(self, request):
        if "revoke" in request.POST:
            token = get_object_or_404(selectors.token_list(user=request.user), pk=request.POST["revoke"])
            tokens.token_revoke(actor=request.user, token=token)
            messages.success(request, _("Token %(name)s revoked.") % {"name": token.name})
            return redirect("tokens")
        form = TokenCreateForm(request.POST)
        if form.is_valid():
            try:
                token, raw = tokens.token_create(actor=request.user, user=request.user, **form.cleaned_data)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                # Never stored in plain text: it waits in this person's session for the next page, which pops it.
                request.session[NEW_TOKEN_SESSION_KEY] = {"name": token.name, "value": raw}
                return redirect("tokens")
        return self._render(request, form, status=400)


class CredentialListView(ConsoleViewMixin, ListView):
    permission_action = roles.VIEW
    queryset = Credential.objects.select_related("team")
    template_name = "accounts/credentials.html"
    paginate_by = 25

    def get_queryset(self):
        credentials_ = super().get_queryset()
        query = self.request.GET.get("q", "").strip()
        return credentials_.filter(name__icontains=query) if query else credentials_

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or CredentialForm()
        context.update(search_context(self.request))
        context["perms_manage_users"] = can(self.request.user, roles.MANAGE_USERS)
        context["perms_add_model"] = can(self.request.user, roles.ADD_MODEL)
        return context

    def post(self, request):
        require(request.user, roles.ADD_MODEL)
        form = CredentialForm(request.POST)
        if form.is_valid():
            try:
                credentials.credential_create(
                    actor=request.user,
                    value=form.cleaned_data["value"],
                    **{k: form.cleaned_data[k] for k in ("name", "kind", "description", "team")},
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Credential saved."))
                return redirect("credentials")
        self.object_list = self.get_queryset()
        return render(request, self.template_name, self.get_context_data(form=form), status=400)


class CredentialDetailView(ConsoleViewMixin, View):
    permission_action = roles.ADD_MODEL
    queryset = Credential.objects.all()
    template_name = "accounts/credential_detail.html"

    def _credential(self, request, pk) -> Credential:
        credential = self.visible_object(pk)
        return credential

    def get(self, request, pk):
        credential = self._credential(request, pk)
        return render(
            request, self.template_name, {"credential": credential, "form": CredentialForm(instance=credential)}
        )

    def post(self, request, pk):
        credential = self._credential(request, pk)
        if "delete" in request.POST:
            credentials.credential_delete(actor=request.user, credential=credential)
            messages.success(request, _("Credential %(name)s deleted.") % {"name": credential.name})
            return redirect("credentials")
        form = CredentialForm(request.POST, instance=Credential.objects.get(pk=credential.pk))
        if form.is_valid():
            try:
                credentials.credential_update(
                    actor=request.user,
                    credential=credential,
                    name=form.cleaned_data["name"],
                    value=form.cleaned_data["value"] or None,
                    description=form.cleaned_data["description"],
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Credential saved."))
                return redirect("credential-detail", pk=credential.pk)
        return render(request, self.template_name, {"credential": credential, "form": form}, status=400)


class SecretsRotateView(ConsoleViewMixin, View):
    """Re-encrypt every stored secret under the newest key, in a worker (admins)."""

    permission_action = roles.MANAGE_USERS

    def post(self, request):
        credentials.secrets_rotate_enqueue(actor=request.user)
        messages.success(request, _("Re-encryption under the newest key is queued; the audit log records the result."))
        return redirect("credentials")
