"""Shared entry point of the stage CLIs: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import errno
import sys

from training.data.datasets import DatasetError
from training.params import ParamsError

USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, DatasetError, FileNotFoundError)
# Faults of the place being written rather than of the program, and what to do about each.
WRITE_FAULTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "choose a writable location",
}


def run(main, *extra_errors: type[BaseException]) -> None:
    try:
        main()
    except USER_ERRORS + extra_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in WRITE_FAULTS:
            raise
        print(f"error: cannot write {exc.filename or 'an output'} ({exc.strerror}); {WRITE_FAULTS[exc.errno]}",
              file=sys.stderr)
        sys.exit(2)
