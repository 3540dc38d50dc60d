"""Every page of the URL map, with `<pk>` filled by a seeded object (tests/support/fuzz_seed.py): for the tests that
walk the whole console (the form fuzz, the Chinese walk)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver

# Which seeded object a page's <pk> names, by the start of its route.
PK_OWNERS = {
    "users/": "users",
    "credentials/": "credentials",
    "inventory/hosts/": "hosts",
    "inventory/gpus/": "gpus",
    "models/sources/endpoints/": "endpoints",
    "models/": "models",
    "deployments/images/": "images",
    "deployments/": "deployments",
    "approvals/": "approvals",
    "jobs/": "jobs",
    "teams/": "teams",
    "datasets/": "datasets",
    "finetune/adapters/": "adapters",
    "finetune/": "finetunes",
    "gateway/keys/": "inference-keys",
    "gateway/service-accounts/": "service-accounts",
    "benchmarks/": "benchmarks",
    "quality/variants/": "models/variants",
    "health/": "health-checks",
    "fleet/hosts/": "hosts",
    "fleet/deployments/": "deployments",
}
NOT_PAGES = ("api/", "i18n/", "logout/", "healthz")  # the API has its own fuzz; these render no form
ANONYMOUS_PAGES = {"login/"}  # a signed-in user is sent on from these


def routes(patterns=None, prefix: str = ""):
    """(route, URLPattern) of the whole URL map."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def url_for(route: str, seeded: dict[str, int]) -> str:
    if "<int:pk>" not in route:
        return "/" + route
    owner = next((owner for start, owner in PK_OWNERS.items() if route.startswith(start)), None)
    assert owner, f"{route}: name the seeded object its <pk> stands for in PK_OWNERS"
    assert owner in seeded, f"{route}: seed a {owner} object in tests/support/fuzz_seed.py"
    return "/" + route.replace("<int:pk>", str(seeded[owner])).replace("<int:version>", "1")  # datasets: v1


def pages(seeded: dict[str, int]) -> list[tuple[str, str]]:
    """(route, url) of every page with a GET, and pages whose forms only some objects show: the downloading copy
    (cancel), a running and a cancelled fine-tune (stop, resume), a running quantize job (stop), an adapter (deploy,
    merge) and a finished benchmark with a suggestion (apply)."""
    found = []
    for route, pattern in routes():
        view = getattr(pattern.callback, "view_class", None)
        if not route.startswith(NOT_PAGES) and view is not None and hasattr(view, "get"):
            found.append((route, url_for(route, seeded)))
    return [
        *found,
        ("models/<int:pk>/", f"/models/{seeded['models/downloading']}/"),
        ("jobs/<int:pk>/", f"/jobs/{seeded['finetunes']}/"),
        ("jobs/<int:pk>/", f"/jobs/{seeded['finetunes/running']}/"),
        ("jobs/<int:pk>/", f"/jobs/{seeded['quantize-jobs']}/"),
        ("models/<int:pk>/", f"/models/{seeded['adapters']}/"),
        ("benchmarks/<int:pk>/", f"/benchmarks/{seeded['benchmarks/tuned']}/"),
    ]
