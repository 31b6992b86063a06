"""BcQLM behind `transformers`' OpenAI-compatible server (`bcqlm serve`); see `server.py`."""

from .server import BcQLMModelManager, build_app


__all__ = ["BcQLMModelManager", "build_app"]
