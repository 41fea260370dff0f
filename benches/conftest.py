from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sample_image_path() -> Path:
    return REPO / "vasa_engine" / "assets" / "astronaut.png"
