"""Where the files the tests read live: tests/fixtures/ (see its README for the source of each)."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL_CONFIGS = FIXTURES / "model-configs"
NVML_H200 = FIXTURES / "nvml-h200.json"
