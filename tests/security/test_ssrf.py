"""Every HTTP call to a model source checks each hop against the allow-list, in the web process too: a mirror
on the list that answers 302 to an address off the list used to be followed while resolving a revision."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.models import AllowedEndpoint, ModelArtifact, ModelSource
from tests.support.deploy_fixtures import process_host

pytestmark = pytest.mark.django_db


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def trap():
    """An internal service off the allow-list: it records every request that reaches it."""
    hits: list[str] = []

    class Trap(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"internal": "secret"}')

        def log_message(self, *args):
            pass

    server = _serve(Trap)
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


@pytest.fixture
def redirecting_mirror(trap):
    target, _hits = trap

    class Mirror(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"{target}{self.path}")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = _serve(Mirror)
    yield f"http://localhost:{server.server_port}"
    server.shutdown()


def test_resolve_refuses_a_redirect_off_the_allow_list(api, engineer, admin, redirecting_mirror, trap):
    _target, hits = trap
    AllowedEndpoint.objects.create(pattern="localhost", note="the mirror, by name only")
    source = ModelSource.objects.create(name="mirror", kind="mirror", endpoint=redirecting_mirror, created_by=admin)
    host = process_host("resolve-node")
    body = {"source": source.name, "repo_id": "acme/tiny", "host": host.name}
    refused = api(engineer).post("/api/v1/models/", body, expected=400).data
    assert "Redirect refused" in str(refused.get("source")) and "127.0.0.1" in str(refused["source"])
    assert hits == []  # the internal address was never contacted
    assert not ModelArtifact.objects.exists()


def test_a_mirror_answering_json_without_an_id_is_a_clear_error(api, engineer, admin, trap):
    target, hits = trap  # answers {"internal": "secret"} to everything: no "id"
    AllowedEndpoint.objects.create(pattern="127.0.0.1")
    source = ModelSource.objects.create(name="odd", kind="mirror", endpoint=target, created_by=admin)
    host = process_host("odd-node")
    refused = (
        api(engineer)
        .post("/api/v1/models/", {"source": source.name, "repo_id": "acme/tiny", "host": host.name}, expected=400)
        .data
    )  # was a 500 (KeyError: 'id')
    assert "did not answer like a Hugging Face Hub" in str(refused)
    assert hits  # it was asked, legitimately: it is on the list


def test_sizing_contacts_no_hub_that_is_off_the_allow_list(api, engineer, hub_server):
    """The sizing API read config.json from the Hub (here the test Hub at 127.0.0.1) with the Hub absent from the
    list; now it answers 400 on `source` and not one request leaves."""
    hub_server.add_repo("acme/tiny", {"config.json": b'{"model_type": "llama"}'})
    AllowedEndpoint.objects.all().delete()  # an admin removed the Hub
    refused = api(engineer).get("/api/v1/sizing/?source=acme/tiny", expected=400).data
    assert "not an allowed source" in str(refused["source"]) and hub_server.endpoint in str(refused["source"])
    assert hub_server.requests == []  # no connection reached it


def test_sizing_refuses_a_listed_hub_that_redirects_off_the_list(api, engineer, redirecting_mirror, trap, monkeypatch):
    """A mirror on the list (HF_ENDPOINT) whose answer sends the client elsewhere: the hop is refused before it."""
    from huggingface_hub import constants

    _target, hits = trap
    monkeypatch.setattr(constants, "ENDPOINT", redirecting_mirror)
    monkeypatch.setattr(
        "huggingface_hub.file_download.HUGGINGFACE_CO_URL_TEMPLATE",
        redirecting_mirror + "/{repo_id}/resolve/{revision}/{filename}",
    )
    AllowedEndpoint.objects.create(pattern="localhost", note="the mirror, by name only")
    refused = api(engineer).get("/api/v1/sizing/?source=acme/tiny", expected=400).data
    assert "Redirect refused" in str(refused["source"]) and "127.0.0.1" in str(refused["source"])
    assert hits == []


def test_a_session_made_anew_inside_the_block_is_guarded_too(trap):
    """huggingface_hub throws its sessions away after a connection error (reset_sessions) and retries with a new
    one; that retry used to leave without the allow-list guard."""
    from huggingface_hub.utils import get_session, reset_sessions

    from deployments.registry.endpoints import RedirectRefused, allow_listed_hops

    target, hits = trap
    with allow_listed_hops(patterns=["huggingface.co"]):
        reset_sessions()  # what http_backoff and http_get do after a ConnectionError
        with pytest.raises(RedirectRefused):
            get_session().get(f"{target}/after-a-reset", timeout=5)
    assert hits == []
    assert get_session().get(f"{target}/outside", timeout=5).status_code == 200  # the guard ends with the block
