"""The reference classifier on disk: constructor arguments and weights in one file, written atomically."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from models.classifier import Classifier
from tasks.errors import CorruptDataError, InputUnavailableError
from tasks.infra.storage import atomic_path

REBUILD = "rebuild it with `dvc repro`"


def save_classifier(model: Classifier, path: Path) -> None:
    """Serialised in memory first: torch.save to a file path records that (random, temporary) name
    in the archive, and the same model must give the same bytes, the hash DVC versions."""
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"config": model.config, "state_dict": state}, buffer)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_classifier(path: Path) -> Classifier:
    """The classifier saved at `path`, in eval mode on the CPU (weights only: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise InputUnavailableError(f"reference classifier {path} not found; {REBUILD}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = Classifier(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptDataError(f"reference classifier {path} is unreadable ({reason}); {REBUILD}") from None
    return model.eval()
