"""Job kinds, one module each. Importing this package registers them (the workers app does, in ready())."""

from workers.handlers import delete, download, finetune, imports, serve

__all__ = ["delete", "download", "finetune", "imports", "serve"]
