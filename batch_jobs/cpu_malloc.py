"""glibc malloc settings under which CPU torch trains fast: freed memory is kept rather than
returned to the OS, so each step does not pay page faults for tensors freed and allocated again.

glibc reads them when a process starts: setting them in `os.environ` reaches only the processes
started afterwards. The Makefile exports the same values for `make demo` and `make test`
(tests/test_cpu_malloc.py keeps the two equal).
"""

from __future__ import annotations

import os
import sys

ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000"}


def for_children() -> None:
    """Set the values (where unset) for the processes this one starts."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)


def reexec_unless_set() -> None:
    """Make this process run under the values: re-execute the script with them where any is unset
    (call first thing, before heavy imports)."""
    if all(key in os.environ for key in ENV):
        return
    for_children()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # with the interpreter's own flags
