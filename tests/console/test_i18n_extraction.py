"""Every user-facing string the code marks has a zh-Hans translation: a fresh extraction (makemessages over the
source as it is now, into a copy of the committed catalog) leaves no entry empty or fuzzy. A string added without
`make messages` and a translation fails here, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.conftest import need
from tests.console.test_i18n import parse_po

ROOT = Path(settings.BASE_DIR)
SOURCES = ("console", "deployments", "audit", "workers", "templates")


def test_a_fresh_extraction_finds_no_string_without_a_translation(tmp_path):
    need(shutil.which("msgmerge") is not None, "GNU gettext (msgmerge) extracts the strings: apt-get install gettext")
    # A tree of links to the sources beside a copy of the catalog: makemessages writes into the copy, never into the
    # committed one.
    for name in SOURCES:
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "locale", tmp_path / "locale")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "console.settings"}
    subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "zh_Hans", "--symlinks", "--no-obsolete", "-v", "0"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=300,
    )
    fresh = parse_po(tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po")[1:]
    assert len(fresh) > 1000
    missing = [e["msgid"] for e in fresh if not e.get("msgstr") and not e.get("msgstr[0]")]
    fuzzy = [e["msgid"] for e in fresh if "fuzzy" in e.get("flags", set())]
    assert not missing, f"{len(missing)} strings without a zh-Hans translation (run `make messages`): {missing[:20]}"
    assert not fuzzy, f"{len(fuzzy)} fuzzy translations to check: {fuzzy[:20]}"
