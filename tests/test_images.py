"""What the image and compose file promise users who run them with Docker."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "schemathesis", "playwright", "aiosmtpd"}


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    found = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {package.strip().lower(): version.strip() for package, version in found}


def test_the_image_installs_runtime_dependencies_only_at_the_tested_versions():
    runtime, tested = pins("requirements-runtime.lock"), pins("requirements.lock")
    assert not DEV_TOOLS & set(runtime)
    assert {p: v for p, v in runtime.items() if tested.get(p) != v} == {}
    assert "requirements-runtime.lock" in (ROOT / "Dockerfile").read_text()


def test_compose_needs_a_secret_key_and_builds_the_image_once():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert ":?" in compose["x-app-env"]["SECRET_KEY"]
    assert [name for name, s in services.items() if "build" in s] == ["migrate"]
    for name, service in services.items():
        image = service.get("image", "")
        assert service.get("healthcheck") or name == "migrate", f"{name} has no healthcheck"
        assert ":" in image, f"{name}'s image {image!r} is not pinned"
