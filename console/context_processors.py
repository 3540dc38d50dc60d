from console.navigation import visible_items
from console.redis_health import redis_available


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": []}
    return {"nav_items": visible_items(user)}


def services(request) -> dict:
    """`redis_unavailable`: the pages' banner saying live updates and new background work wait for Redis."""
    return {"redis_unavailable": not redis_available()}
