"""Factories for accounts: users with roles, teams, credentials."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from console.accounts.models import Credential

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")

    @factory.post_generation
    def password(self, create, extracted, **kwargs):
        self.set_password(extracted or PASSWORD)
        if create:
            self.save()

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        for role in extracted or []:
            self.groups.add(Group.objects.get(name=role))


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group

    name = factory.Sequence(lambda n: f"team-{n}")


class CredentialFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Credential

    name = factory.Sequence(lambda n: f"hf-token-{n}")
    kind = Credential.Kind.HF_TOKEN
    value = factory.Sequence(lambda n: f"hf_secretvalue{n:04d}")
