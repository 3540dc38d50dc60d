"""Backup and restore of one console: the database, DATA_DIR's keys, the model stores' manifests and the audit
checkpoints, in one directory with a MANIFEST of every part's sha256 (`manage.py backup`, `manage.py restore`)."""
