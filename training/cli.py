"""Shared entry point of the stage CLIs: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import sys

from training.data.datasets import DatasetError
from training.params import ParamsError

USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, DatasetError, FileNotFoundError)


def run(main, *extra_errors: type[BaseException]) -> None:
    try:
        main()
    except USER_ERRORS + extra_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
