"""Bad input found by the probe: each used to raise (a 500) or slip through; now a clear answer."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from console import roles
from console.accounts.services.access import object_grant
from console.errors import ApplicationError
from deployments.models import Deployment, DeploymentSpec
from deployments.serving.services import deployment_create
from tests.factories import CredentialFactory, DeploymentFactory, TeamFactory, UserFactory
from tests.support.deploy_fixtures import process_host, ready_artifact, tiny_model_in_store
from workers.handlers.serve import run_spec

pytestmark = pytest.mark.django_db


def test_the_grants_list_answers_with_names(api, admin):
    deployment = DeploymentFactory()
    engineer, team = UserFactory(roles=["engineer"]), TeamFactory(name="nlp")
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    object_grant(actor=admin, grantee=team, action=roles.VIEW, target=deployment)
    rows = api(admin).get("/api/v1/grants/").data  # raised "'str' object has no attribute 'username'"
    assert {(row["user"], row["team"], row["action"]) for row in rows} == {
        (engineer.username, None, roles.USE_DEPLOYMENT),
        (None, "nlp", roles.VIEW),
    }


def test_a_role_is_never_the_owning_team_of_a_deployment(api, admin):
    artifact = ready_artifact(process_host(gpus=1), tiny_model_in_store())
    body = {"name": "owned-by-a-role", "team": "admin", "launch": False, "spec_input": {"artifact": artifact.pk}}
    refused = api(admin).post("/api/v1/deployments/", body, expected=400).data
    assert "team" in refused  # the API used to accept the admin role group as the owner; the form never did
    with pytest.raises(ApplicationError) as error:
        deployment_create(
            actor=admin, name="owned", spec={"artifact": artifact.pk}, team=Group.objects.get(name="admin")
        )
    assert error.value.field == "team" and not Deployment.objects.exists()


def test_a_spec_with_a_hub_token_deploys_and_the_token_reaches_the_server_only_as_a_file(api, admin):
    """It raised `ValueError: Cannot assign "1"`, so no token ever reached a server."""
    canary = "hf_canary_f3a9c2d4e1b0"
    token = CredentialFactory(name="gated-models", value=canary)
    artifact = ready_artifact(process_host(gpus=1), tiny_model_in_store())
    body = {"name": "gated", "launch": False, "spec_input": {"artifact": artifact.pk, "credential": token.pk}}
    created = api(admin).post("/api/v1/deployments/", body).data
    spec = DeploymentSpec.objects.get(deployment_id=created["id"])
    assert spec.credential == token
    deployment = spec.deployment
    deployment.host = artifact.host
    run = run_spec(deployment, spec)
    assert list(run.secret_files.values()) == [canary]  # mounted as a 0600 file, named by HF_TOKEN_PATH
    assert canary not in " ".join(run.args) and canary not in str(run.env)
    refused = (
        api(admin)
        .post("/api/v1/deployments/plan/", {"spec": {"artifact": artifact.pk, "credential": 999999}}, expected=400)
        .data
    )
    assert "credential" in str(refused)
