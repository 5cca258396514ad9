"""`make sanitize`: the C ops built with AddressSanitizer and UndefinedBehaviorSanitizer, and the
property tests (tests/runtime/test_ops_properties.py) run against that build.

    python -m tools.sanitize

The build goes to build/sanitize/ (the repository's own runtime/ops/_ops*.so is untouched) and
the tests load it from there (OPS_EXTENSION). The Python interpreter is not instrumented, so
libasan is preloaded for it; leak checking is off (the interpreter's own allocations at exit are
not the ops'); any sanitizer report stops the process (-fno-sanitize-recover, halt_on_error).
Prints how many cases ran and how many sanitizer errors were reported; exit 0 only when the
tests passed with none.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "sanitize"
SANITIZERS = "-fsanitize=address,undefined"
PROPERTY_TESTS = "tests/runtime/test_ops_properties.py"
# What sanitizers print for each error they find.
ERROR_PATTERN = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")
CASES_PATTERN = re.compile(r"(\d+) passing, (\d+) failing")


def build() -> Path:
    """The sanitized extension, compiled from runtime/ops/_ops.c into BUILD; its path."""
    env = dict(os.environ, CFLAGS=f"{SANITIZERS} -fno-sanitize-recover=all -fno-omit-frame-pointer -g",
               LDFLAGS=SANITIZERS)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-lib", str(BUILD / "lib"),
                    "--build-temp", str(BUILD / "temp")], cwd=ROOT, env=env, check=True)
    built = sorted((BUILD / "lib" / "runtime" / "ops").glob("_ops*.so"))
    if not built:  # setup.py marks the extension optional: a failed compile only warns
        sys.exit(f"sanitize: the sanitized build of runtime/ops/_ops.c failed (no library in {BUILD / 'lib'})")
    return built[0]


def libasan() -> str:
    """The compiler's AddressSanitizer runtime, preloaded into the uninstrumented interpreter."""
    path = subprocess.run([os.environ.get("CC", "gcc"), "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if not os.path.isabs(path):  # gcc echoes the bare name when it has no such file
        sys.exit("sanitize: the C compiler has no libasan.so (on Debian/Ubuntu: apt-get install libasan8)")
    return path


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # answers --help
    extension = build()
    env = dict(os.environ, OPS_EXTENSION=str(extension), HYPOTHESIS_PROFILE="sanitize", LD_PRELOAD=libasan(),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", PYTHONPATH=os.pathsep.join(
                   filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process, so
    # pytest must not be holding that descriptor's output back
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys",
               "--hypothesis-show-statistics", PROPERTY_TESTS]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    (BUILD / "report.txt").write_text(output)
    sys.stdout.write(output)
    cases = sum(int(passing) + int(failing) for passing, failing in CASES_PATTERN.findall(output))
    errors = len(ERROR_PATTERN.findall(output))
    print(f"sanitize: {cases} cases over the properties of {PROPERTY_TESTS}, {errors} sanitizer errors, "
          f"pytest exit {done.returncode} (full output: {(BUILD / 'report.txt').relative_to(ROOT)})")
    return 0 if done.returncode == 0 and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
