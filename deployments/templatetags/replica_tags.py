"""The deployment page's replica summary ("2/3 replicas running" and each server's state and place)."""

from django import template

from deployments.serving.replicas import Summary, summary

register = template.Library()


@register.simple_tag
def replica_summary(deployment) -> Summary:
    return summary(deployment)
