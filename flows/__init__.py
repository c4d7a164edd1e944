"""Prefect flows: they only order the tasks of `tasks/` (one flow runs any study of the registry)."""

import os

# No telemetry: nothing about a run leaves the machine (offline, it would only log connection errors).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A temporary Prefect server (a new database is migrated first) may take a minute to start on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# A tracking server that goes down mid-run: fail within about a minute, not MLflow's default of minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
