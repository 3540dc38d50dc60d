"""Pages for inference keys, service accounts and team quotas: input parsed, permission asked (console.permissions),
one service called. A new key's value is shown once: it waits in the creator's session for the next page, which
pops it (post/redirect/get, so a reload never creates a second key), and that page is never cached."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin, search_context
from console.permissions import (
    ActionDenied,
    may_manage_service_accounts,
    may_open_inference_keys,
    may_use_some_deployment,
    reachable,
)
from deployments.gateway import key_selectors, keys
from deployments.gateway.key_forms import KeyCreateForm, KeyEditForm, ServiceAccountForm, TeamQuotaForm
from deployments.gateway.models import InferenceKey, ServiceAccount, TeamQuota

NEW_KEY_SESSION_KEY = "gateway.new_key"  # the raw value waits here for the next page, which pops it


def gateway_base_url(request) -> str:
    """Where applications call: GATEWAY_PUBLIC_URL, or this console's host on GATEWAY_PORT."""
    if settings.GATEWAY_PUBLIC_URL:
        return settings.GATEWAY_PUBLIC_URL.rstrip("/")
    hostname = urlsplit(f"//{request.get_host()}").hostname or "localhost"
    if ":" in hostname:  # an IPv6 address
        hostname = f"[{hostname}]"
    return f"{request.scheme}://{hostname}:{settings.GATEWAY_PORT}"


def example_model(key: InferenceKey) -> str:
    """A deployment name for the example calls: one the key lists, else a placeholder."""
    first = key.deployments.order_by("name").values_list("name", flat=True).first()
    return first or "<deployment>"


def managed_account(user, pk) -> ServiceAccount:
    """A service account the user manages; another team's is an audited 404, a missing one a plain 404."""
    return reachable(key_selectors.service_account_list(user=user), user, "manage this service account", pk)


class KeysPageMixin(ConsoleViewMixin):
    """Open to those who may hold keys, still own one, or manage service accounts (may_open_inference_keys)."""

    def authorize(self, request, kwargs) -> None:
        if not may_open_inference_keys(request.user):
            raise ActionDenied(request.user, "use inference keys")

    def key(self, pk) -> InferenceKey:
        """A key the user manages; someone else's is an audited 404, a missing one a plain 404."""
        return reachable(
            key_selectors.key_list(user=self.request.user), self.request.user, "manage this inference key", pk
        )


class AccountsPageMixin(ConsoleViewMixin):
    """Open to those who manage the service accounts of some team (may_manage_service_accounts)."""

    def authorize(self, request, kwargs) -> None:
        if not may_manage_service_accounts(request.user):
            raise ActionDenied(request.user, "manage service accounts")

    def account(self, pk) -> ServiceAccount:
        return managed_account(self.request.user, pk)


class KeyListView(KeysPageMixin, ListView):
    """My keys, and those of the service accounts I manage (every key for user managers), with search."""

    template_name = "gateway/keys.html"
    paginate_by = 25

    def get_queryset(self):
        found = key_selectors.key_list(user=self.request.user)
        query = self.request.GET.get("q", "").strip()
        if query:
            found = found.filter(
                Q(name__icontains=query)
                | Q(prefix__startswith=query)
                | Q(user__username__icontains=query)
                | Q(service_account__name__icontains=query)
            )
        return found

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(search_context(self.request))
        context["can_create"] = may_use_some_deployment(self.request.user)
        context["manages_accounts"] = may_manage_service_accounts(self.request.user)
        return context


class KeyCreateView(KeysPageMixin, View):
    """A key of one's own, or (with a pk) of a service account the user manages."""

    template_name = "gateway/key_form.html"

    def _account(self, pk) -> ServiceAccount | None:
        if pk is None:
            return None
        account = managed_account(self.request.user, pk)
        if account.disabled_at is not None:
            raise Http404
        return account

    def _render(self, request, form, account, status=200):
        return render(request, self.template_name, {"form": form, "account": account}, status=status)

    def get(self, request, pk=None):
        account = self._account(pk)
        return self._render(request, KeyCreateForm(owner=request.user, account=account), account)

    def post(self, request, pk=None):
        account = self._account(pk)
        form = KeyCreateForm(request.POST, owner=request.user, account=account)
        if form.is_valid():
            data = form.cleaned_data
            try:
                key, raw = keys.key_create(
                    actor=request.user,
                    service_account=account,
                    name=data["name"],
                    days=data["days"],
                    team=data.get("team"),
                    deployments=data["deployments"],
                    all_deployments=data["all_deployments"],
                    allowed_sources=form.sources(),
                    limits=form.limits(),
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                request.session[NEW_KEY_SESSION_KEY] = {"id": key.pk, "value": raw}
                return redirect("inference-key-detail", pk=key.pk)
        return self._render(request, form, account, status=400)


class KeyDetailView(KeysPageMixin, View):
    """A key: its scope and limits (editable while it is usable), how to call with it, revoke. Right after its
    creation, its value, once."""

    template_name = "gateway/key_detail.html"

    def _render(self, request, key, form=None, status=200):
        new = request.session.get(NEW_KEY_SESSION_KEY)
        raw = None
        if new and new.get("id") == key.pk:
            raw = request.session.pop(NEW_KEY_SESSION_KEY)["value"]
        if form is None and key.is_active:
            form = KeyEditForm(initial=KeyEditForm.initial_for(key), owner=key.user, account=key.service_account)
        context = {
            "key": key,
            "form": form,
            "raw": raw,
            "key_placeholder": _("<your key>"),  # in the examples, for a key whose value is gone
            "base_url": gateway_base_url(request),
            "model": example_model(key),
            "deployments": list(key.deployments.order_by("name")),
        }
        response = render(request, self.template_name, context, status=status)
        if raw:  # a page carrying a secret is never kept by a cache (nor shown again by Back)
            add_never_cache_headers(response)
        return response

    def get(self, request, pk):
        return self._render(request, self.key(pk))

    def post(self, request, pk):
        key = self.key(pk)
        form = KeyEditForm(request.POST, owner=key.user, account=key.service_account)
        if form.is_valid():
            data = form.cleaned_data
            changes = {"team": data.get("team")} if "team" in form.fields else {}
            try:
                keys.key_update(
                    actor=request.user,
                    key=key,
                    name=data["name"],
                    deployments=data["deployments"],
                    all_deployments=data["all_deployments"],
                    allowed_sources=form.sources(),
                    limits=form.limits(),
                    **changes,
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Key %(name)s saved.") % {"name": key.name})
                return redirect("inference-key-detail", pk=key.pk)
        return self._render(request, key, form=form, status=400)


class KeyRevokeView(KeysPageMixin, View):
    def post(self, request, pk):
        key = self.key(pk)
        keys.key_revoke(actor=request.user, key=key)
        messages.success(request, _("Key %(name)s revoked: calls with it are refused.") % {"name": key.name})
        if key.service_account_id:
            return redirect("service-account-detail", pk=key.service_account_id)
        return redirect("inference-keys")


class ServiceAccountListView(AccountsPageMixin, ListView):
    template_name = "gateway/service_accounts.html"
    paginate_by = 25

    def get_queryset(self):
        found = key_selectors.service_account_list(user=self.request.user)
        query = self.request.GET.get("q", "").strip()
        return found.filter(Q(name__icontains=query) | Q(team__name__icontains=query)) if query else found

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or ServiceAccountForm(user=self.request.user)
        context.update(search_context(self.request))
        return context

    def post(self, request):
        form = ServiceAccountForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                account = keys.service_account_create(actor=request.user, **form.cleaned_data)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Service account %(name)s created.") % {"name": account.name})
                return redirect("service-account-detail", pk=account.pk)
        self.object_list = self.get_queryset()
        return render(request, self.template_name, self.get_context_data(form=form), status=400)


class ServiceAccountDetailView(AccountsPageMixin, View):
    def get(self, request, pk):
        account = self.account(pk)
        context = {"account": account, "keys": account.keys.select_related("team").prefetch_related("deployments")}
        return render(request, "gateway/service_account_detail.html", context)


class ServiceAccountDisableView(AccountsPageMixin, View):
    def post(self, request, pk):
        account = self.account(pk)
        keys.service_account_disable(actor=request.user, account=account)
        messages.success(
            request, _("Service account %(name)s disabled; its keys are revoked.") % {"name": account.name}
        )
        return redirect("service-account-detail", pk=account.pk)


class TeamQuotaView(AccountsPageMixin, View):
    """Each managed team's limits, shared by every key that counts against the team; one form sets a team's."""

    template_name = "gateway/team_quotas.html"

    def _render(self, request, form, status=200):
        rows = key_selectors.team_quota_rows(user=request.user)
        return render(request, self.template_name, {"form": form, "rows": rows}, status=status)

    def get(self, request):
        initial = {}
        team = request.GET.get("team", "")
        managed = key_selectors.managed_teams(user=request.user)
        if team.isdigit() and len(team) < 12 and managed.filter(pk=int(team)).exists():
            quota = TeamQuota.objects.filter(team_id=int(team)).first()  # the team a row names, its limits filled in
            initial = {"team": int(team), **(quota.limits if quota else {})}
        return self._render(request, TeamQuotaForm(user=request.user, initial=initial))

    def post(self, request):
        form = TeamQuotaForm(request.POST, user=request.user)
        if form.is_valid():
            team = form.cleaned_data["team"]
            try:
                keys.team_quota_set(actor=request.user, team=team, limits=form.limits())
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Quota of team %(team)s saved.") % {"team": team.name})
                return redirect("team-quotas")
        return self._render(request, form, status=400)
