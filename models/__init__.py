"""Generative models and estimators; they know nothing of Prefect, MLflow or DVC."""
