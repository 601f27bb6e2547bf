"""Shared fixtures: the two real models shipped in pip packages, and llama.cpp's reference data."""

from pathlib import Path

import pytest

from llamapy.hub import ModelNotFound, default_model_path, gemma3_model_path

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MODELS = {"smollm2": default_model_path, "gemma3": gemma3_model_path}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"llama.cpp reference data not found at {REFERENCE}")
    return REFERENCE


def model_path(name: str) -> Path:
    try:
        return MODELS[name]()
    except ModelNotFound as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session", params=list(MODELS))
def model_name(request) -> str:
    return request.param
