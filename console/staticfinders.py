"""Serve the files of installed XStatic packages (Bootstrap...) as static files under their name."""

from __future__ import annotations

from django.contrib.staticfiles.finders import BaseFinder
from django.contrib.staticfiles.utils import get_files
from django.core.files.storage import FileSystemStorage

XSTATIC_PACKAGES = {"bootstrap": "xstatic.pkg.bootstrap"}


class XStaticFinder(BaseFinder):
    """Finds `<name>/<path>` inside the data directory of XStatic package `name`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import importlib

        self.storages = {}
        for prefix, module_name in XSTATIC_PACKAGES.items():
            module = importlib.import_module(module_name)
            storage = FileSystemStorage(location=module.BASE_DIR)
            storage.prefix = prefix
            self.storages[prefix] = storage

    def check(self, **kwargs):
        return []

    def find(self, path, find_all=False, **kwargs):
        found = []
        for prefix, storage in self.storages.items():
            if path.startswith(prefix + "/"):
                relative = path[len(prefix) + 1 :]
                if storage.exists(relative):
                    match = storage.path(relative)
                    if not find_all:
                        return match
                    found.append(match)
        return found

    def list(self, ignore_patterns):
        for storage in self.storages.values():
            for path in get_files(storage, ignore_patterns):
                yield path, storage
