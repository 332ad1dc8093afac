"""What every evalkit command line shares: bad input is one line and exit code 2.

`CliParser` turns argparse's usage errors into `EvalkitError`; `run_cli` runs a command's
body and turns any `EvalkitError` into `error: <message>` on stderr and exit code 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from evalkit.errors import EXIT_BAD_INPUT, EvalkitError


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors become EvalkitError: one line on stderr, exit 2."""

    def error(self, message: str):
        raise EvalkitError(f"{self.prog}: {message}")


def run_cli(body: Callable[[], int | None], cleanup: Callable[[], None] | None = None) -> int:
    """Run `body` (which parses its arguments and does the work); its return value, or 0,
    is the exit code; EvalkitError -> one line on stderr and EXIT_BAD_INPUT."""
    try:
        rc = body()
        return 0 if rc is None else int(rc)
    except EvalkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if cleanup is not None:
            cleanup()
