"""What an admin gives to copy a model to another host: the form (pages) and the serializer (API)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from console.forms import StyledMixin
from deployments.models import Host


class CopyForm(StyledMixin, forms.Form):
    host = forms.ModelChoiceField(
        label=_("Copy to host"),
        queryset=Host.objects.none(),
        help_text=_(
            "The files go through the console (the hosts need to reach only the console), each one verified by its "
            "sha256 on arrival."
        ),
    )

    def __init__(self, *args, targets, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = targets


class CopySerializer(serializers.Serializer):
    host = serializers.SlugRelatedField(
        slug_field="name", queryset=Host.objects.all(), help_text="The host that receives the copy."
    )
