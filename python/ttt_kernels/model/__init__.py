"""The TTT-E2E network assembled from the package's ops (docs/model.md)."""

from .config import TTTE2EConfig
from .model import TTTE2EModel, TTTE2EState

__all__ = ["TTTE2EConfig", "TTTE2EModel", "TTTE2EState"]
