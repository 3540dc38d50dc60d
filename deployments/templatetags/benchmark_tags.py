"""The deployment page's Benchmarks card (templates/benchmarks/_deployment_card.html) for the user viewing it, and
the dashboard's count of open benchmark drop alerts."""

from django import template
from django.db.models import Count

from deployments.benchmarks.alerts import alert_list
from deployments.benchmarks.card import card_context

register = template.Library()


@register.inclusion_tag("benchmarks/_deployment_card.html", takes_context=True)
def benchmark_card(context, deployment) -> dict:
    card = card_context(context["request"].user, deployment, schedule_form=context.get("schedule_form"))
    card["csrf_token"] = context.get("csrf_token")
    card["request"] = context["request"]
    return card


@register.simple_tag(takes_context=True)
def open_benchmark_alerts(context) -> list[dict]:
    """The deployments the user may view that have open benchmark drop alerts, with their counts (the dashboard)."""
    found = alert_list(user=context["request"].user, open_only=True)
    counts = found.values("deployment_id", "deployment__name").annotate(n=Count("id")).order_by("deployment__name")
    return [{"pk": row["deployment_id"], "name": row["deployment__name"], "count": row["n"]} for row in counts]
