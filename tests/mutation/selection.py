"""Pytest plugin of the mutation runs (`-p tests.mutation.selection`, with --noconftest): deselects the tests that
request a fixture of tests/conftest.py that is not loaded there (a Prefect server, a project copy)."""

from __future__ import annotations

CONFTEST_FIXTURES = {"prefect_api", "project_copy", "mlflow_store"}


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if not CONFTEST_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
