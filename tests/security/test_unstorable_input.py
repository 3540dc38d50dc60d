"""Input the API fuzz (test_api_fuzz.py) turned into 500s: NUL characters, unpaired surrogates and ids that are
no numbers. Each is now a 400 or a 404, in one place (console/api/parsers.py, console/api/viewsets.py)."""

from __future__ import annotations

import json

import pytest

from deployments.models import Gpu
from tests.factories import HostFactory

pytestmark = pytest.mark.django_db


def _post_json(client, url: str, body: dict):
    # json.dumps escapes the surrogate as \ud800, as a hostile client would send it.
    return client.post(url, data=json.dumps(body), content_type="application/json")


def test_a_nul_in_a_looked_up_name_is_refused(client, admin):
    HostFactory(name="gpu-node-1")
    client.force_login(admin)
    for body in ({"host": "gpu-node-1\x00", "index": 0, "memory_total": 1}, {"host": "\x00"}):
        response = _post_json(client, "/api/v1/gpus/", body)  # was DataError: text cannot contain NUL
        assert response.status_code == 400 and response.json()["code"] == "parse_error"
        assert "NUL" in response.json()["detail"]
    form = client.post("/api/v1/gpus/", {"host": "gpu-node-1\x00", "index": "0"})
    assert form.status_code == 400 and not Gpu.objects.exists()


def test_an_unpaired_surrogate_is_refused_not_echoed(client, admin):
    client.force_login(admin)
    response = _post_json(client, "/api/v1/hosts/", {"name": "node", "status": "\ud800"})
    # The choice field's error echoed the value and the response could not be encoded: a 500.
    assert response.status_code == 400 and "surrogates" in response.json()["detail"]


def test_a_nul_in_a_query_parameter_is_refused(api, admin):
    refused = api(admin).get("/api/v1/models/gc/?host=node%00", expected=400).data
    assert "host" in refused


def test_an_id_that_is_no_number_is_not_found(api, admin):
    host = HostFactory()
    for bad_id in ("true", "null", "1e3", f"{host.pk}x"):
        api(admin).get(f"/api/v1/hosts/{bad_id}/", expected=404)  # was ValueError in the hidden-object check
    api(admin).get(f"/api/v1/hosts/{host.pk}/")
