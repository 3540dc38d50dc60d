"""Inference keys, service accounts and team quotas, through their services: hashed at rest and never in the audit
log, expiring within the cap, refused once revoked or expired, scoped only to what the owner may use, a source
allow-list of real addresses, every change audited and announced to running gateways (the Redis counter)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant
from console.errors import ApplicationError
from console.permissions import (
    ActionDenied,
    may_manage_service_accounts,
    team_may_see_deployment,
    team_may_use_deployment,
)
from deployments.gateway import cache, keys
from deployments.gateway.models import InferenceKey, TeamQuota, hash_key
from tests.factories import DeploymentFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(admin, engineer):
    """Two deployments; the engineer may use `granted` (a grant) but not `other`; team `apps` owns `owned`."""
    granted, other = DeploymentFactory(name="granted"), DeploymentFactory(name="other")
    team = TeamFactory(name="apps")
    owned = DeploymentFactory(name="owned", team=team)
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=granted)
    return {"granted": granted, "other": other, "owned": owned, "team": team}


def _all_text_of(model) -> str:
    """Every column of every row, as text (what someone reading the table would see)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {model._meta.db_table}")  # noqa: S608 (a model's own table name)
        return repr(cursor.fetchall())


def test_a_key_is_stored_as_a_digest_and_its_value_is_in_neither_the_table_nor_the_audit_log(engineer, world):
    key, raw = keys.key_create(actor=engineer, name="app", deployments=[world["granted"]])
    assert raw.startswith("llk_") and len(raw) > 40
    assert key.digest == hash_key(raw) and key.prefix == raw[: keys.PREFIX_LENGTH]
    secret_part = raw[keys.PREFIX_LENGTH :]
    assert secret_part not in _all_text_of(InferenceKey)
    assert secret_part not in _all_text_of(AuditEvent)
    event = AuditEvent.objects.get(action="inference_key.created")
    assert event.actor_name == engineer.username and key.prefix in event.detail and '"granted"' in event.detail
    assert keys.authenticate(raw) == key


def test_expiry_defaults_and_is_capped(engineer, world):
    key, _ = keys.key_create(actor=engineer, name="default", deployments=[world["granted"]])
    expected = timezone.now() + timedelta(days=settings.INFERENCE_KEY_DEFAULT_DAYS)
    assert abs((key.expires_at - expected).total_seconds()) < 60
    with override_settings(INFERENCE_KEY_MAX_DAYS=30):
        with pytest.raises(ApplicationError) as refused:
            keys.key_create(actor=engineer, name="long", days=31, deployments=[world["granted"]])
        assert refused.value.field == "days" and "30" in refused.value.message
        keys.key_create(actor=engineer, name="month", days=30, deployments=[world["granted"]])
    with pytest.raises(ApplicationError) as refused:
        keys.key_create(actor=engineer, name="none", days=0, deployments=[world["granted"]])
    assert refused.value.field == "days"
    assert InferenceKey.objects.count() == 2


def test_revoked_expired_and_disabled_keys_do_not_authenticate(admin, engineer, world):
    key, raw = keys.key_create(actor=engineer, name="app", deployments=[world["granted"]])
    assert keys.authenticate(raw) == key
    assert keys.authenticate(raw + "x") is None and keys.authenticate("") is None
    assert keys.authenticate("llk_\ud800") is None  # not encodable: not a key, not a crash

    InferenceKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert keys.authenticate(raw) is None

    key, raw = keys.key_create(actor=engineer, name="revoked", deployments=[world["granted"]])
    keys.key_revoke(actor=engineer, key=key)
    assert keys.authenticate(raw) is None

    key, raw = keys.key_create(actor=engineer, name="leaver", deployments=[world["granted"]])
    engineer.is_active = False
    engineer.save(update_fields=["is_active"])
    assert keys.authenticate(raw) is None

    account = keys.service_account_create(actor=admin, name="billing", team=world["team"])
    key, raw = keys.key_create(actor=admin, service_account=account, name="bot", deployments=[world["owned"]])
    found = keys.authenticate(raw)
    assert found == key and found.service_account == account and found.team == world["team"]
    keys.service_account_disable(actor=admin, account=account)
    assert keys.authenticate(raw) is None
    key.refresh_from_db()
    assert key.revoked_at is not None  # disabling revoked it too


def test_a_key_reaches_only_deployments_its_owner_may_use(admin, engineer, world):
    with pytest.raises(ApplicationError) as refused:
        keys.key_create(actor=engineer, name="app", deployments=[world["granted"], world["other"]])
    assert refused.value.field == "deployments" and "other" in refused.value.message
    with pytest.raises(ApplicationError) as refused:
        keys.key_create(actor=engineer, name="app", deployments=[])
    assert refused.value.field == "deployments"
    key, _ = keys.key_create(actor=engineer, name="app", deployments=[world["granted"]])
    with pytest.raises(ApplicationError):
        keys.key_update(actor=engineer, key=key, deployments=[world["other"]])
    assert list(key.deployments.all()) == [world["granted"]]

    # A service account's key reaches what its team may use: owned, or granted to the team.
    account = keys.service_account_create(actor=admin, name="billing", team=world["team"])
    with pytest.raises(ApplicationError):
        keys.key_create(actor=admin, service_account=account, name="bot", deployments=[world["granted"]])
    object_grant(actor=admin, grantee=world["team"], action=roles.USE_DEPLOYMENT, target=world["granted"])
    key, _ = keys.key_create(
        actor=admin, service_account=account, name="bot", deployments=[world["owned"], world["granted"]]
    )
    assert key.user is None and key.team == world["team"]


def test_a_user_who_may_use_no_deployment_holds_no_key(engineer, auditor):
    with pytest.raises(ActionDenied):
        keys.key_create(actor=auditor, name="app", all_deployments=True)
    with pytest.raises(ActionDenied):
        keys.key_create(actor=engineer, name="app", all_deployments=True)


def test_the_team_rules_for_service_account_keys(admin, world):
    team, owned, granted, other = world["team"], world["owned"], world["granted"], world["other"]
    assert team_may_use_deployment(team.pk, owned) and team_may_see_deployment(team.pk, owned)
    assert not team_may_see_deployment(team.pk, other) and not team_may_use_deployment(team.pk, other)
    object_grant(actor=admin, grantee=team, action=roles.VIEW, target=other)
    assert team_may_see_deployment(team.pk, other) and not team_may_use_deployment(team.pk, other)
    object_grant(actor=admin, grantee=team, action=roles.DEPLOY, target=granted)
    assert team_may_use_deployment(team.pk, granted)
    assert not team_may_use_deployment(None, owned)


def test_source_allow_list_takes_addresses_and_networks_only(engineer, world):
    key, _ = keys.key_create(
        actor=engineer,
        name="app",
        deployments=[world["granted"]],
        allowed_sources=["10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "10.0.0.0/8"],
    )
    assert key.allowed_sources == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    for bad in ("10.0.0.300", "example.com", "10.1.2.3/8", "10.0.0.0/33", ""):
        with pytest.raises(ApplicationError) as refused:
            keys.key_create(actor=engineer, name="app", deployments=[world["granted"]], allowed_sources=[bad])
        assert refused.value.field == "allowed_sources", bad
    with pytest.raises(ApplicationError) as refused:
        keys.key_create(actor=engineer, name="x", deployments=[world["granted"]], allowed_sources=["10.1.2.3/8"])
    assert "10.0.0.0/8" in refused.value.message  # says what was probably meant


def test_limits_are_positive_whole_numbers_by_name(engineer, world):
    key, _ = keys.key_create(
        actor=engineer, name="app", deployments=[world["granted"]], limits={"rpm": 60, "tpm": None, "tpd": 10**6}
    )
    assert key.limits == {"rpm": 60, "tpd": 10**6}
    for limits, field in (({"rpm": 0}, "rpm"), ({"tpm": 2**31}, "tpm"), ({"tpd": "9"}, "tpd"), ({"x": 1}, "limits")):
        with pytest.raises(ApplicationError) as refused:
            keys.key_create(actor=engineer, name="app", deployments=[world["granted"]], limits=limits)
        assert refused.value.field == field
    keys.key_update(actor=engineer, key=key, limits={"rpm": None, "tpm": 1000})
    key.refresh_from_db()
    assert key.limits == {"tpm": 1000, "tpd": 10**6}


def _generation() -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).get(cache.KEYS_GENERATION) or 0)


def test_every_change_is_audited_and_bumps_the_gateway_counter(
    admin, engineer, world, redis_url, django_capture_on_commit_callbacks
):
    before = _generation()
    with django_capture_on_commit_callbacks(execute=True):
        key, _ = keys.key_create(actor=engineer, name="app", deployments=[world["granted"]])
    assert _generation() == before + 1
    with django_capture_on_commit_callbacks(execute=True):
        keys.key_update(actor=engineer, key=key, name="renamed", allowed_sources=["192.0.2.0/24"])
        keys.key_revoke(actor=engineer, key=key)
        account = keys.service_account_create(actor=admin, name="billing", team=world["team"])
        keys.service_account_disable(actor=admin, account=account)
        keys.team_quota_set(actor=admin, team=world["team"], limits={"rpm": 100})
    assert _generation() == before + 5  # update, revoke, disable, quota (creating an account changes no key)
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions[-6:] == [
        "inference_key.created",
        "inference_key.updated",
        "inference_key.revoked",
        "service_account.created",
        "service_account.disabled",
        "team_quota.set",
    ]
    updated = AuditEvent.objects.get(action="inference_key.updated")
    assert "renamed" in updated.diff and "192.0.2.0/24" in updated.diff
    assert TeamQuota.objects.get(team=world["team"]).limits == {"rpm": 100}


def test_who_manages_service_accounts_keys_and_quotas(admin, engineer, world):
    team = world["team"]
    team.user_set.add(engineer)
    assert not may_manage_service_accounts(engineer, team.pk)  # a member without deploy there
    with pytest.raises(ActionDenied):
        keys.service_account_create(actor=engineer, name="billing", team=team)
    with pytest.raises(ActionDenied):
        keys.team_quota_set(actor=engineer, team=team, limits={"rpm": 1})
    object_grant(actor=admin, grantee=team, action=roles.DEPLOY, target=team)  # a team scope of deploy
    assert may_manage_service_accounts(engineer, team.pk)
    assert not may_manage_service_accounts(engineer, TeamFactory(name="other-team").pk)
    account = keys.service_account_create(actor=engineer, name="billing", team=team)
    key, _ = keys.key_create(actor=engineer, service_account=account, name="bot", all_deployments=True)
    keys.team_quota_set(actor=engineer, team=team, limits={"tpd": 5})
    # Someone else's personal key is not theirs to revoke; an admin may revoke any.
    admins_key, _ = keys.key_create(actor=admin, name="mine", all_deployments=True)
    with pytest.raises(ActionDenied):
        keys.key_revoke(actor=engineer, key=admins_key)
    keys.key_revoke(actor=admin, key=key)
    with pytest.raises(ApplicationError):
        keys.key_create(actor=engineer, service_account=account, name="x", team=TeamFactory(), all_deployments=True)
    with pytest.raises(ApplicationError) as refused:
        keys.service_account_create(actor=admin, name="billing", team=team)
    assert refused.value.field == "name"
    with pytest.raises(ApplicationError) as refused:
        keys.service_account_create(actor=admin, name="Not a slug", team=team)
    assert refused.value.field == "name"
