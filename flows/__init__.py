"""Prefect flows: one per study, each ordering the tasks of `tasks/` across generations."""

import os

# Offline machines: Prefect's telemetry would only log connection errors.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
