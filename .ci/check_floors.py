"""Stop CI unless every pin of the constraints file given as argument is the version installed."""

import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement


def main(path: str) -> int:
    wrong = []
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (pin,) = requirement.specifier
            try:
                installed = version(requirement.name)
            except PackageNotFoundError:
                installed = "nothing"
            if installed != pin.version:  # also catches a local build such as 2.13.0+cpu
                wrong.append(f"{requirement.name}: pinned {pin.version}, installed {installed}")
    print("\n".join(wrong) or f"every pin of {path} is installed", file=sys.stderr if wrong else sys.stdout)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
