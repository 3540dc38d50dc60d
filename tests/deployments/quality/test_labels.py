"""What the quality pages call a task kind and a dataset version, in the reader's language (the stored values are
the program's names and numbers)."""

from __future__ import annotations

from django.utils import translation

from deployments.datasets.models import Dataset, DatasetVersion
from deployments.quality.models import EvalResult


def test_a_task_kind_reads_as_words_in_either_language():
    result = EvalResult(task_kind="multiple_choice")
    assert result.task_kind_label == "Multiple choice"
    with translation.override("zh-hans"):
        assert result.task_kind_label == "多项选择"
    assert EvalResult(task_kind="something_new").task_kind_label == "something_new"  # unknown: as stored


def test_a_dataset_version_choice_names_its_rows_in_either_language():
    version = DatasetVersion(dataset=Dataset(name="support-chats"), version=3, row_count=1200)
    assert version.choice_label == "support-chats v3 (1200 rows)"
    assert DatasetVersion(dataset=Dataset(name="one"), version=1, row_count=1).choice_label == "one v1 (1 row)"
    with translation.override("zh-hans"):
        assert version.choice_label == "support-chats v3（1200 行）"  # noqa: RUF001 (Chinese parentheses)
