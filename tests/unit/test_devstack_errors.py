"""The local stack fails with errors that say what is missing and how to fix it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devstack import kafka as kafka_mod
from devstack.process import DevstackError, ensure_port_free

pytestmark = pytest.mark.unit


def test_taken_port_is_named_with_a_fix() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(
            DevstackError, match=rf"port 127\.0\.0\.1:{port} is already taken.*choose another"
        ):
            ensure_port_free(port, "Kafka")


@pytest.mark.parametrize(("missing", "hint"), [("java", "openjdk-17"), ("mvn", "apt-get install -y maven")])
def test_missing_tool_is_named_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str, hint: str
) -> None:
    monkeypatch.setattr(kafka_mod, "CACHE_DIR", tmp_path)  # no cached jars
    real_which = kafka_mod.shutil.which
    monkeypatch.setattr(kafka_mod.shutil, "which", lambda name: None if name == missing else real_which(name))
    with pytest.raises(DevstackError, match=rf"`{missing}` is not on PATH.*{hint}"):
        kafka_mod.ensure_jars()


def test_maven_failure_is_reported_with_its_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kafka_mod, "CACHE_DIR", tmp_path)
    bad_pom = tmp_path / "pom.xml"
    bad_pom.write_text("<project>not a pom</project>")
    monkeypatch.setattr(kafka_mod, "POM", bad_pom)
    monkeypatch.setattr(kafka_mod, "kafka_version", lambda: "0.0.0")
    with pytest.raises(
        DevstackError, match=r"Fetching the Kafka broker jars with Maven failed.*Maven Central"
    ):
        kafka_mod.ensure_jars()


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = {kafka_mod.random_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not any(cid.startswith("-") for cid in ids) and all(len(cid) == 22 for cid in ids)
