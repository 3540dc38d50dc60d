"""The endpoint allow-list: names, networks, resolved addresses, and redirects (SSRF)."""

from __future__ import annotations

import pytest
import requests

from console.errors import ApplicationError
from deployments.registry.endpoints import RedirectRefused, check_url, redirect_guard

PATTERNS = ["huggingface.co", "*.huggingface.co", "10.8.0.0/16"]


def resolver(table):
    return lambda host: table.get(host, [])


@pytest.mark.parametrize(
    "url", ["https://huggingface.co", "https://cdn-lfs.huggingface.co/x", "http://10.8.3.4:8090", "http://mirror.corp"]
)
def test_allowed(url):
    check_url(url, patterns=PATTERNS, resolver=resolver({"mirror.corp": ["10.8.1.1"]}))


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:6379",
        "http://evil.example",
        "file:///etc/passwd",
        "http://user:pw@huggingface.co",
        "http://mixed.corp",
    ],
)
def test_refused_with_a_field_error(url):
    table = {"evil.example": ["93.184.216.34"], "mixed.corp": ["10.8.1.1", "192.168.1.1"]}
    with pytest.raises(ApplicationError) as error:
        check_url(url, patterns=PATTERNS, resolver=resolver(table))
    assert error.value.field == "endpoint"


def test_redirects_are_checked_before_they_are_followed():
    guard = redirect_guard(PATTERNS, resolver=resolver({}))
    response = requests.Response()
    response.status_code, response.url = 302, "https://huggingface.co/acme/x/resolve/main/w"
    response.headers["Location"] = "https://cdn-lfs.huggingface.co/blob"
    assert guard(response) is response
    response.headers["Location"] = "http://169.254.169.254/latest/meta-data"
    with pytest.raises(RedirectRefused, match="not on the endpoint allow-list"):
        guard(response)
