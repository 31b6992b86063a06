"""`python -m modeling_bcqlm.demo [--model ...]`: the same as `bcqlm demo`."""

import sys

from ..cli.main import main


sys.exit(main(["demo", *sys.argv[1:]]))
