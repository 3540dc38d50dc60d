"""Inventory pages: hosts and their GPUs, with free vs reserved memory and each one's history."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q, Sum
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views import View
from django.views.generic import ListView

from audit.selectors import target_history
from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin, search_context
from console.permissions import can
from deployments.inventory import services as inventory
from deployments.inventory import sizing as planner
from deployments.inventory.forms import GpuForm, HostForm, SizingForm
from deployments.inventory.selectors import host_list
from deployments.models import Gpu, Host


class HostListView(ConsoleViewMixin, ListView):
    permission_action = roles.VIEW
    queryset = Host.objects.all()
    template_name = "inventory/hosts.html"
    paginate_by = 25

    def get_queryset(self):
        hosts = (
            host_list(user=self.request.user)
            .annotate(gpu_count=Count("gpus", distinct=True), memory_total=Sum("gpus__memory_total"))
            .order_by("name")
        )
        query = self.request.GET.get("q", "").strip()
        if query:
            hosts = hosts.filter(Q(name__icontains=query) | Q(address__icontains=query))
        return hosts

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(search_context(self.request))
        context["can_manage"] = can(self.request.user, roles.MANAGE_INVENTORY)
        return context


class HostDetailView(ConsoleViewMixin, View):
    permission_action = roles.VIEW
    queryset = Host.objects.all()
    template_name = "inventory/host_detail.html"

    def get(self, request, pk):
        host = self.visible_object(pk)
        gpus = list(host_list(user=request.user).get(pk=host.pk).gpus.all())
        for gpu in gpus:
            gpu.reserved_total = gpu.reserved or 0
            gpu.unreserved = gpu.memory_total - gpu.reserved_total
        history = target_history(user=request.user, targets=[host, *gpus])
        return render(
            request,
            self.template_name,
            {
                "host": host,
                "gpus": gpus,
                "history": history,
                "can_manage": can(request.user, roles.MANAGE_INVENTORY),
            },
        )


class _FormView(ConsoleViewMixin, View):
    """Create/edit through a service; errors land on the form's fields."""

    permission_action = roles.MANAGE_INVENTORY
    template_name = "inventory/form.html"
    title = ""

    def render_form(self, request, form, status=200, **extra):
        return render(request, self.template_name, {"form": form, "title": self.title, **extra}, status=status)


class HostCreateView(_FormView):
    title = gettext_lazy("Add a host")  # lazy: a class attribute is made at import, before any language

    def get(self, request):
        return self.render_form(request, HostForm())

    def post(self, request):
        form = HostForm(request.POST)
        if form.is_valid():
            try:
                host = inventory.host_create(actor=request.user, **form.cleaned_data)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Host %(name)s added.") % {"name": host.name})
                return redirect("host-detail", pk=host.pk)
        return self.render_form(request, form, status=400)


class HostEditView(_FormView):
    queryset = Host.objects.all()
    title = gettext_lazy("Edit host")

    def get(self, request, pk):
        host = self.visible_object(pk)
        return self.render_form(request, HostForm(instance=host), host=host)

    def post(self, request, pk):
        host = self.visible_object(pk)
        if "delete" in request.POST:
            try:
                inventory.host_delete(actor=request.user, host=host)
            except ApplicationError as error:
                messages.error(request, error.message)
                return redirect("host-detail", pk=host.pk)
            messages.success(request, _("Host %(name)s deleted.") % {"name": host.name})
            return redirect("hosts")
        form = HostForm(request.POST, instance=Host.objects.get(pk=host.pk))
        if form.is_valid():
            try:
                inventory.host_update(actor=request.user, host=host, **form.cleaned_data)
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("Host saved."))
                return redirect("host-detail", pk=host.pk)
        return self.render_form(request, form, status=400, host=host)


class GpuCreateView(_FormView):
    queryset = Host.objects.all()
    title = gettext_lazy("Add a GPU")

    def get(self, request, pk):
        host = self.visible_object(pk)
        next_index = (host.gpus.order_by("-index").values_list("index", flat=True).first() or -1) + 1
        return self.render_form(request, GpuForm(initial={"index": next_index}), host=host)

    def post(self, request, pk):
        host = self.visible_object(pk)
        form = GpuForm(request.POST)
        if form.is_valid():
            try:
                inventory.gpu_create(actor=request.user, host=host, **form.service_fields())
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("GPU added."))
                return redirect("host-detail", pk=host.pk)
        return self.render_form(request, form, status=400, host=host)


class GpuEditView(_FormView):
    queryset = Gpu.objects.select_related("host")
    title = gettext_lazy("Edit GPU")

    def get(self, request, pk):
        gpu = self.visible_object(pk)
        return self.render_form(request, GpuForm(instance=gpu), host=gpu.host, gpu=gpu)

    def post(self, request, pk):
        gpu = self.visible_object(pk)
        if "delete" in request.POST:
            try:
                inventory.gpu_delete(actor=request.user, gpu=gpu)
            except ApplicationError as error:
                messages.error(request, error.message)
            else:
                messages.success(request, _("GPU deleted."))
            return redirect("host-detail", pk=gpu.host_id)
        form = GpuForm(request.POST, instance=Gpu.objects.get(pk=gpu.pk))
        if form.is_valid():
            try:
                inventory.gpu_update(actor=request.user, gpu=gpu, **form.service_fields())
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(request, _("GPU saved."))
                return redirect("host-detail", pk=gpu.host_id)
        return self.render_form(request, form, status=400, host=gpu.host, gpu=gpu)


class SizingView(ConsoleViewMixin, View):
    """The VRAM planner: memory per precision, the smallest GPU set in the inventory, power range; for vLLM also
    its share of each GPU, the KV cache tokens and the sequences at max_model_len."""

    permission_action = roles.VIEW
    template_name = "inventory/sizing.html"

    def get(self, request):
        form = SizingForm(request.GET or None)
        report, status = None, 200
        if form.is_bound and form.is_valid():
            try:
                report = planner.plan(user=request.user, **form.plan_arguments())
            except ApplicationError as error:
                apply_error(form, error)
                status = 400
        elif form.is_bound:
            status = 400
        return render(request, self.template_name, {"form": form, "report": report}, status=status)
