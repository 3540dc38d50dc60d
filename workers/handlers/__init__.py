"""Job kinds, one module each. Importing this package registers them (the workers app does, in ready())."""

from workers.handlers import (
    benchmark,
    dataset_import,
    dataset_stats,
    delete,
    download,
    evaluate,
    finetune,
    imports,
    quantize,
    serve,
)

__all__ = [
    "benchmark",
    "dataset_import",
    "dataset_stats",
    "delete",
    "download",
    "evaluate",
    "finetune",
    "imports",
    "quantize",
    "serve",
]
