"""Teams pages (user managers): the list with search and a create form; one team with rename, members and delete.
Every change is a POST answered by a redirect."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.models import Group
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from console import roles
from console.accounts import selectors
from console.accounts.forms import TeamForm, TeamMemberForm
from console.accounts.services import teams
from console.api.parsers import has_unstorable_text
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin, search_context


class TeamListView(ConsoleViewMixin, ListView):
    permission_action = roles.MANAGE_USERS
    template_name = "accounts/teams.html"
    paginate_by = 25

    def get_queryset(self):
        found = selectors.team_list()
        query = self.request.GET.get("q", "").strip()
        return found.filter(name__icontains=query) if query else found

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or TeamForm()
        context.update(search_context(self.request))
        context["rows"] = [(team, team.user_set.count()) for team in context["object_list"]]
        return context

    def post(self, request):
        form = TeamForm(request.POST)
        if form.is_valid():
            try:
                team = teams.team_create(actor=request.user, name=form.cleaned_data["name"])
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Team %(name)s created.") % {"name": team.name})
                return redirect("team-detail", pk=team.pk)
        self.object_list = self.get_queryset()
        return render(request, self.template_name, self.get_context_data(form=form), status=400)


class TeamDetailView(ConsoleViewMixin, View):
    """One team: `op` says what a POST does (rename, add, remove, delete)."""

    permission_action = roles.MANAGE_USERS
    template_name = "accounts/team_detail.html"

    def _team(self, pk) -> Group:
        team = selectors.team_list().filter(pk=pk).first()
        if team is None:  # role groups are not teams
            raise Http404
        return team

    def _render(self, request, team, *, rename_form=None, member_form=None, delete_error="", status=200):
        context = {
            "team": team,
            "members": selectors.team_members(team=team),
            "holdings": selectors.team_holdings(team=team),
            "rename_form": rename_form or TeamForm(initial={"name": team.name}),
            "member_form": member_form or TeamMemberForm(),
            "delete_error": delete_error,
        }
        return render(request, self.template_name, context, status=status)

    def get(self, request, pk):
        return self._render(request, self._team(pk))

    def post(self, request, pk):
        team = self._team(pk)
        op = request.POST.get("op")
        if op == "rename":
            return self._rename(request, team)
        if op == "add":
            return self._add(request, team)
        if op == "remove":
            username = request.POST.get("username", "")
            members = selectors.team_members(team=team)
            person = None if has_unstorable_text(username) else members.filter(username=username).first()
            if person is not None:
                teams.team_member_remove(actor=request.user, team=team, user=person)
                messages.success(request, _("%(user)s left %(team)s.") % {"user": person.username, "team": team.name})
            return redirect("team-detail", pk=team.pk)
        if op == "delete":
            try:
                teams.team_delete(actor=request.user, team=team)
            except ApplicationError as error:
                return self._render(request, team, delete_error=error.message, status=400)
            messages.success(request, _("Team %(name)s deleted.") % {"name": team.name})
            return redirect("teams")
        return self._render(request, team, status=400)

    def _rename(self, request, team):
        form = TeamForm(request.POST)
        if form.is_valid():
            try:
                teams.team_rename(actor=request.user, team=team, name=form.cleaned_data["name"])
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Team renamed to %(name)s.") % {"name": team.name})
                return redirect("team-detail", pk=team.pk)
        return self._render(request, team, rename_form=form, status=400)

    def _add(self, request, team):
        form = TeamMemberForm(request.POST)
        if form.is_valid():
            person = form.cleaned_data["username"]
            teams.team_member_add(actor=request.user, team=team, user=person)
            messages.success(request, _("%(user)s joined %(team)s.") % {"user": person.username, "team": team.name})
            return redirect("team-detail", pk=team.pk)
        return self._render(request, team, member_form=form, status=400)
