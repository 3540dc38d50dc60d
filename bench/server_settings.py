"""The console's settings for load runs on a checkout: static files read through the finders (as the test suite
reads them), since collecting and compressing them takes minutes here; production serves the collected files."""

from console.settings import *  # noqa: F403
from console.settings import STORAGES

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
WHITENOISE_USE_FINDERS = True
