"""The import page says what the tiny test model is: random weights, gibberish answers, not a broken server."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_the_import_page_warns_that_the_tiny_model_answers_gibberish(client, engineer):
    client.force_login(engineer)
    page = client.get("/models/import/").content.decode()
    assert 'id="tiny-model-note"' in page
    assert "workers.jobs.tiny_model" in page and "gibberish" in page and "not a broken server" in page
    assert 'id="tiny-model-note"' not in client.get("/models/add/").content.decode()
