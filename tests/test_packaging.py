"""setup.py's dependency floors are the releases that CI's second run installs (.ci/floors.txt)."""

import ast
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


ROOT = Path(__file__).resolve().parent.parent


def setup_requirements() -> list[Requirement]:
    """The requirement strings of setup.py's module-level lists (INFERENCE, TRAIN, QUANT, TEST)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = [node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)]
    return [Requirement(ast.literal_eval(element)) for value in lists for element in value.elts]


def floor_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_every_lower_bound_is_the_pinned_floor():
    requirements, pins = setup_requirements(), floor_pins()
    assert {"torch", "transformers", "peft", "bitsandbytes", "timm"} <= {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        lower = [specifier.version for specifier in requirement.specifier if specifier.operator == ">="]
        assert lower, f"{requirement} has no lower bound"
        assert pins.get(canonicalize_name(requirement.name)) == lower[0], requirement

