from django import template

register = template.Library()


@register.filter
def gb(value) -> str:
    """Bytes as GB (10^9 bytes, as the planner counts)."""
    if value in (None, ""):
        return "—"
    return f"{int(value) / 10**9:,.1f} GB"


@register.filter
def billions(value) -> str:
    if value in (None, ""):
        return "—"
    return f"{int(value) / 10**9:,.2f} B"
