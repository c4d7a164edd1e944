"""Prefect flows: they only order the tasks of `tasks/` (one flow runs any study of the registry)."""

import os

# Offline machines: Prefect's telemetry would only log connection errors.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A tracking server that goes down mid-run: fail within about a minute, not MLflow's default of minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
