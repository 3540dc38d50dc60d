"""The fleet's sections on the admins' dashboard (templates/monitoring/_fleet_sections.html), for the user viewing
it (console/views.py cannot import deployments: the dashboard asks here, as it does for benchmark alerts)."""

from django import template

from deployments.monitoring.fleet import Fleet, fleet_overview

register = template.Library()


@register.simple_tag(takes_context=True)
def fleet_for_reader(context) -> Fleet:
    return fleet_overview(context["request"].user)
