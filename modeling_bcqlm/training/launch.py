"""Running the example scripts as `accelerate launch` runs them."""

from collections.abc import Callable

import torch


def run_script(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """
    Runs a script's `main(argv)`, then leaves the process group if `accelerate launch` made one: a gloo group left to
    the interpreter's exit now and then aborts the process ("terminate called without an active exception").
    """
    try:
        main(argv)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
