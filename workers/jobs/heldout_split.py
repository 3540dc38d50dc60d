"""The train/eval split a fine-tune makes, in one place: the fine-tune trains on one side and evaluates on the
other (finetune_train.build_datasets), and the evaluate job scores the eval side of the same rows, with the same
eval_fraction and seed (evaluate_data). datasets' train_test_split draws the eval rows from the row count and the
seed alone (numpy's default_rng permutation, the eval share rounded up), so the same file, fraction and seed give
the same rows in both jobs. Imports `datasets` only when called: the evaluate program checks its input first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workers.jobs.finetune_data import iter_records


def load_records(path: str, shape: str, cache_dir: str):
    """The scanned file's records as an Arrow-backed (memory-mapped) datasets.Dataset, in file order."""
    import datasets

    datasets.disable_progress_bars()
    stat = os.stat(path)
    return datasets.Dataset.from_generator(
        iter_records,
        gen_kwargs={"path": path, "shape": shape, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        cache_dir=cache_dir,
    )


def train_eval_split(data: Any, eval_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, eval) of a datasets.Dataset: the eval share drawn with the seed, as a fine-tune holds it out.
    ValueError when either side would be empty (too few rows)."""
    split = data.train_test_split(test_size=eval_fraction, seed=seed, shuffle=True)
    return split["train"], split["test"]


def eval_indices(rows: int, eval_fraction: float, seed: int) -> list[int]:
    """The positions (0-based, in file order) of the rows a fine-tune with this fraction and seed holds out, in
    the order it evaluates them: the split above applied to the positions themselves."""
    import datasets

    datasets.disable_progress_bars()
    _train, held_out = train_eval_split(datasets.Dataset.from_dict({"row": list(range(rows))}), eval_fraction, seed)
    return list(held_out["row"])


def cache_dir_for(output_dir: str) -> str:
    return str(Path(output_dir) / ".data-cache")
