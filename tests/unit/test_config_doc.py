"""The README's configuration table is generated from the Settings model and must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from incident_engine.config import Settings
from incident_engine.config_doc import README, markdown_table, readme_with_table

pytestmark = pytest.mark.unit


def test_readme_table_matches_settings() -> None:
    text = README.read_text()
    assert readme_with_table(text) == text, "README.md is stale: run `incidents config --write-readme`"


def test_every_setting_is_documented() -> None:
    table = markdown_table()
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "INCIDENTS_API_TOKEN", "INCIDENTS_BATCH_MAX"):
        assert f"`{name}`" in table
    assert all(row.count("|") == 4 for row in table.splitlines())


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "kafka_sasl_password").write_text("from-a-file")
    settings = Settings(_secrets_dir=tmp_path)  # what INCIDENTS_SECRETS_DIR sets for every instance
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)
