"""The Hugging Face Hub as the default source, and its hosts on the endpoint allow-list."""

from django.db import migrations

HUB_HOSTS = [
    ("huggingface.co", "Hugging Face Hub"),
    ("*.huggingface.co", "Hub CDN (LFS files)"),
    ("*.hf.co", "Hub storage (Xet/CAS)"),
]


def seed(apps, schema_editor):
    ModelSource = apps.get_model("deployments", "ModelSource")
    AllowedEndpoint = apps.get_model("deployments", "AllowedEndpoint")
    ModelSource.objects.get_or_create(name="Hugging Face Hub", defaults={"kind": "hub", "endpoint": ""})
    for pattern, note in HUB_HOSTS:
        AllowedEndpoint.objects.get_or_create(pattern=pattern, defaults={"note": note})


class Migration(migrations.Migration):
    dependencies = [("deployments", "0002_registry_and_jobs")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
