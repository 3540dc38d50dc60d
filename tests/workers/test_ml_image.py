"""The ML image and its `text-generation-launcher` shim: the console starts serve.py exactly as it starts TGI."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import need
from tests.support.serve_process import ROOT, ml_env, ml_python

DOCKERFILE = (ROOT / "Dockerfile.ml").read_text()


def test_ml_image_installs_the_locked_ml_wheels_offline_and_no_console():
    # Built from the bundle's own Debian base and the ml lock's wheels, with no index: nothing is pulled.
    assert "ARG BASE_IMAGE=llmdeploy-base:bookworm" in DOCKERFILE and "FROM ${BASE_IMAGE} AS runtime" in DOCKERFILE
    # The wheels are installed in the build stage; the final image copies only the venv, never a layer with the wheels.
    _, build, final = DOCKERFILE.split("\nFROM runtime")
    assert build.startswith(" AS build\n") and final.startswith("\n")
    assert "--no-index --find-links /tmp/wheels/ml -r /tmp/wheels/ml.lock.txt" in build
    assert "COPY --from=build /opt/ml /opt/ml" in final and "wheels" not in final
    assert "COPY requirements-ml.txt" in DOCKERFILE
    assert "COPY workers/jobs /opt/app/workers/jobs" in DOCKERFILE
    assert "pyproject.toml" not in DOCKERFILE  # the control plane (hub < 1.0) never enters this image
    assert "USER 1000" in DOCKERFILE
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "text-generation-launcher"]' in DOCKERFILE


def test_requirements_pin_every_package_and_the_dependency_split():
    pins = [
        line for line in (ROOT / "requirements-ml.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert all("==" in pin for pin in pins), pins
    names = {pin.split("==")[0] for pin in pins}
    assert {"torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"} <= names
    assert "text-generation" not in names and "django" not in {n.lower() for n in names}
    transformers = next(pin for pin in pins if pin.startswith("transformers=="))
    assert transformers.split("==")[1].split(".")[:2] in (["5", "15"], ["5", "16"], ["5", "17"])


def test_launcher_shim_hands_its_arguments_to_serve():
    need(ml_python() is not None, "the ML environment (make ml-env)")
    out = subprocess.run(
        [str(ROOT / "deploy" / "ml" / "text-generation-launcher"), "--env"],
        env=ml_env({"ML_PYTHON": ml_python()}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["python"].startswith("3.")
