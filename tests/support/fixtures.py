"""Where the files the tests read live: tests/fixtures/ (see its README for the source of each)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
FIXTURES = ROOT / "tests" / "fixtures"
MODEL_CONFIGS = FIXTURES / "model-configs"
NVML_H200 = FIXTURES / "nvml-h200.json"
