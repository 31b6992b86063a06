"""Writing BcQLM checkpoints in the forms other tools load."""

from .hub import save_hub_folder


__all__ = ["save_hub_folder"]
