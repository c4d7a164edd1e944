"""Where a study's outputs live, relative to the repository root (DVC runs stages from there)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyPaths:
    root: Path
    experiment: str

    @property
    def generations(self) -> Path:
        """data/generations/<experiment>: one folder of Parquet datasets per method (a DVC output)."""
        return self.root / "data" / "generations" / self.experiment

    def method_dir(self, method: str) -> Path:
        return self.generations / method

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / self.experiment

    @property
    def per_generation(self) -> Path:
        return self.metrics / "per_generation.csv"

    @property
    def curves(self) -> Path:
        return self.metrics / "curves.csv"

    @property
    def summary(self) -> Path:
        return self.metrics / "summary.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures" / self.experiment

    @property
    def raw(self) -> Path:
        """data/raw: real datasets a user puts in place (data/raw/mnist, data/raw/cifar10)."""
        return self.root / "data" / "raw"

    @property
    def classifier(self) -> Path:
        """data/reference/<experiment>/classifier.pt: the reference classifier (a DVC output)."""
        return self.root / "data" / "reference" / self.experiment / "classifier.pt"

    @property
    def classifier_metrics(self) -> Path:
        return self.root / "metrics" / "reference" / f"{self.experiment}.json"

    @property
    def mlflow_dir(self) -> Path:
        """The default local MLflow store (SQLite database and artifacts), ignored by git: in the repository
        that runs the DVC stage ($DVC_ROOT), so that experiments run by `dvc queue start` in temporary copies
        log where `make ui` looks; else under the root."""
        return Path(os.environ.get("DVC_ROOT") or self.root) / ".mlflow"
