"""Writing results: the progress log, the JSON file, a README section between markers, and number formats."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def jsonable(value):
    """`value` with tuples as lists, keys as strings and non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(results: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(jsonable(results), indent=2) + "\n")


def write_markdown(markdown: str, readme: Path, start: str, end: str) -> None:
    """Replace the section of `readme` between the markers `start` and `end` by `markdown`, or append one."""
    block = f"{start}\n{markdown}{end}"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def gb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def millions(n: float) -> str:
    return f"{n / 1e6:,.1f} M"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
