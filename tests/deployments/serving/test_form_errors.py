"""Deploy form errors that hid: the field errors were below the fold with nothing at the top, the planner panel said
only "The planner could not answer", the device started at GPU on a host without one, and invalid JSON was worded
three ways (the form, the API's fields, the API's body)."""

from __future__ import annotations

import json
import re

import pytest

from console.errors import invalid_json
from deployments.models import Host
from tests.deployments.serving.test_pages import artifact_at, form_data
from tests.factories import GpuFactory, HostFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db


def parser_message(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as error:
        return str(error)
    raise AssertionError("valid JSON")


@pytest.fixture
def cpu_only(tmp_path):
    """A host with no GPU: the newcomer's laptop."""
    return artifact_at(HostFactory(name="laptop"), write_llama_dir(tmp_path / "tiny", "tiny"), "org/tiny-llama")


def test_a_bad_value_is_summarised_at_the_top_with_a_link_to_each_field(client, admin, cpu_only):
    client.force_login(admin)
    response = client.post(
        "/deployments/new/", form_data(cpu_only, review="1", device="cpu", max_input_tokens=0, extra_env="{oops")
    )
    assert response.status_code == 400
    page = response.content.decode()
    summary = page[page.index('id="error-summary"') : page.index("</div>", page.index('id="error-summary"'))]
    assert page.index('id="error-summary"') < page.index('id="deployment-form"')  # above every field
    links = dict(re.findall(r'href="#(id_\w+)" data-error-link="\w+">([^<]+)</a>', summary))
    assert links == {"id_max_input_tokens": "Max input tokens", "id_extra_env": "Extra environment (JSON)"}
    for anchor in links:
        assert f'id="{anchor}"' in page  # each link reaches its field
    assert invalid_json(parser_message("{oops")) in summary


def test_the_gpu_choice_has_an_anchor_for_its_error(client, admin, tmp_path):
    here = artifact_at(HostFactory(name="here"), write_llama_dir(tmp_path / "tiny", "tiny"), "org/tiny-llama")
    elsewhere = GpuFactory(host=HostFactory(name="elsewhere"), index=0)
    client.force_login(admin)
    response = client.post("/deployments/new/", form_data(here, review="1", gpu_indexes=[elsewhere.pk]))
    page = response.content.decode()
    assert 'href="#id_gpu_indexes"' in page and 'id="id_gpu_indexes"' in page


def test_the_device_starts_at_cpu_when_no_online_host_has_a_gpu(client, admin, cpu_only, api):
    client.force_login(admin)
    page = client.get("/deployments/new/").content.decode()
    assert re.search(r'<option value="cpu" selected>', page)

    # The planner agrees: the form's spec (device CPU) fits on that host.
    spec = {"artifact": cpu_only.pk, "device": "cpu", "max_input_tokens": 128, "max_total_tokens": 256}
    verdict = api(admin).post("/api/v1/deployments/plan/", {"spec": spec, "name": "preview"}, expected=200).json()
    assert verdict["verdict"]["fits"] is True and verdict["verdict"]["device"] == "cpu"

    GpuFactory(host=HostFactory(name="gpu-node", status=Host.Status.ONLINE), index=0)
    page = client.get("/deployments/new/").content.decode()
    assert re.search(r'<option value="gpu" selected>', page)


def test_invalid_json_has_one_wording_in_forms_serializers_and_bodies(client, admin, api, cpu_only):
    expected = invalid_json(parser_message("{oops"))
    assert expected.startswith("Not valid JSON: Expecting property name") and expected.endswith("(char 1).")
    client.force_login(admin)

    deploy = client.post("/deployments/new/", form_data(cpu_only, review="1", lora_adapters="{oops"))
    assert expected in deploy.content.decode()

    host = HostFactory(name="labelled")
    edit = client.post(
        f"/inventory/hosts/{host.pk}/edit/", {"name": host.name, "labels": "{oops", "runtime": "process"}
    )
    assert expected in edit.content.decode()

    as_form = api(admin).client.patch(f"/api/v1/hosts/{host.pk}/", {"labels": "{oops"}, format="multipart")
    assert as_form.status_code == 400 and as_form.json() == {"labels": [expected]}

    body = api(admin).client.post(
        "/api/v1/deployments/plan/", data="{oops", content_type="application/json", HTTP_ACCEPT="application/json"
    )
    assert body.status_code == 400 and body.json()["detail"] == expected

    page = client.get("/deployments/new/").content.decode()
    assert 'data-json="Not valid JSON: %(error)s."' in page  # the planner's own check says it the same way
