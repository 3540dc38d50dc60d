"""Job kinds, one module each. Importing this package registers them (the workers app does, in ready())."""

from workers.handlers import (
    benchmark,
    copy,
    dataset_import,
    dataset_stats,
    delete,
    download,
    evaluate,
    finetune,
    health_check,
    imports,
    integrity_sweep,
    quantize,
    serve,
)

__all__ = [
    "benchmark",
    "copy",
    "dataset_import",
    "dataset_stats",
    "delete",
    "download",
    "evaluate",
    "finetune",
    "health_check",
    "imports",
    "integrity_sweep",
    "quantize",
    "serve",
]
