"""Settings reach the engine: every PAGELANE_* variable is a Settings field, documented in the
README's configuration table, and the OCR ones end up in the engine's config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ocr.pipeline import make_provider
from service.extraction import ocr_config
from service.settings import Settings, SettingsError, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("backend", ["library", "subprocess"])
def test_the_tesseract_backend_variable_chooses_the_engines_backend(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("PAGELANE_TESSERACT_BACKEND", backend)
    settings = load_settings(secret_key="x")

    config = ocr_config(settings)

    assert settings.tesseract_backend == backend
    assert config.tesseract_backend == backend
    provider = make_provider(config)
    try:
        assert getattr(provider, "backend_name", None) == backend
    finally:
        getattr(provider, "close", lambda: None)()


def test_auto_is_the_default_and_a_bad_backend_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ocr_config(load_settings(secret_key="x")).tesseract_backend == "auto"
    monkeypatch.setenv("PAGELANE_TESSERACT_BACKEND", "gpu")
    with pytest.raises(SettingsError, match="PAGELANE_TESSERACT_BACKEND"):
        load_settings(secret_key="x")


def test_every_setting_has_a_row_in_the_readme_configuration_table() -> None:
    documented: set[str] = set()
    for line in README.read_text().splitlines():
        # A row names one variable, or several sharing a prefix: `PAGELANE_X_URL` / `_MODEL`.
        if not line.startswith("| `PAGELANE_"):
            continue
        names = re.findall(r"`(PAGELANE_[A-Z0-9_]+|_[A-Z0-9_]+)`", line.split("|")[1])
        stem = names[0].rsplit("_", 1)[0]
        documented.add(names[0])
        documented.update(stem + name if name.startswith("_") else name for name in names[1:])
    wanted = {f"PAGELANE_{name.upper()}" for name in Settings.model_fields}
    assert wanted - documented == set()
