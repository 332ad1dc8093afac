"""`python -m evalkit.artifact info X.ptz`: config, parameters, bytes and the 16 MB budget.

The format itself lives in evalkit/model/artifact.py (a counted contract file: no CLI code there).
"""
from __future__ import annotations

import sys

from evalkit.cli import CliParser, run_cli
from evalkit.model.artifact import info


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="python -m evalkit.artifact", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="print config, parameter count, bytes and the 16 MB budget")
    p_info.add_argument("artifact")
    return run_cli(lambda: print(info(parser.parse_args(argv).artifact)))


if __name__ == "__main__":
    sys.exit(main())
