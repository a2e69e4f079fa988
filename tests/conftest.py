"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Torch's OpenMP threads spin by default; on a shared 2-core machine that starves everything else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for a module's page tests; skips, saying why, where it is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def sample_jpegs(tmp_path_factory) -> dict[str, Path]:
    """The real sample photos (chelsea, coffee, rocket, china, flower) as JPEG files, by name."""
    from imgclf.samples import write_sample_photos

    return {p.stem: p for p in write_sample_photos(tmp_path_factory.mktemp("photos"))}


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory) -> Path:
    """A model directory for server tests: packages 'tiny' and 'tiny2' (random tiny conv nets)."""
    from serve_support import build_tiny_package

    root = tmp_path_factory.mktemp("serve-models")
    build_tiny_package(root / "tiny", name="tiny")
    build_tiny_package(root / "tiny2", name="tiny2", labels=["x", "y", "z", "w"], seed=1)
    return root


@pytest.fixture(scope="session")
def lite0_package(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (shipped weights) exported once into a session IMGCLF_HOME cache."""
    from serve_support import export_cached

    return export_cached("efficientnet_lite0", tmp_path_factory.mktemp("imgclf-home"))


@pytest.fixture(scope="session")
def pg_server() -> str:
    """A PostgreSQL server URL ($IMGCLF_TEST_PG_URL, else a throwaway cluster); skips where there is none."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    from pg_support import ENV, throwaway_cluster

    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    try:
        cluster = throwaway_cluster()
        url = cluster.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL for this test: {exc}")
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture()
def pg_url(pg_server: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    from pg_support import create_database, drop_database

    url, name = create_database(pg_server)
    yield url
    drop_database(pg_server, name)
