"""Keep TensorFlow's C++ start-up chatter off the terminal.

Importing TensorFlow and touching a device for the first time make its C++ runtime write
lines straight to file descriptor 2 (``WARNING: All log messages before
absl::InitializeLog() ...``, oneDNN, ``cudart_stub``, ``cuInit``, CPU feature notes),
which ``TF_CPP_MIN_LOG_LEVEL`` does not silence. :func:`filtered_stderr` points fd 2 at a
pipe for the duration of a command; a thread copies every line through to the real
stderr except those start-up lines. When ``sys.stderr`` is the process's own stderr it is
pointed straight at the real one, so logging and progress bars are untouched and still
see a terminal (under a capturing test runner it is left alone).
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: One line of TensorFlow's start-up noise: absl's pre-init banner, the CPU-feature note
#: and its continuation, and absl-formatted lines from the C++ files that announce the
#: build, the CPU and the (missing) GPU. A line from any other source file gets through.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics"
    r"|cpu_feature_guard|cuda_dnn|cuda_fft|cuda_blas|util|computation_placer)\.cc:\d+\] .*)$"
)


def _pump(read_fd: int, out: io.BufferedWriter) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if not NOISE.match(line.decode("utf-8", "replace").rstrip("\r\n")):
                out.write(line)
                out.flush()


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """Filter TensorFlow's start-up lines out of fd 2 while the block runs."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    real = os.fdopen(os.dup(real_fd), "wb")
    pump = threading.Thread(target=_pump, args=(read_fd, real), daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    saved = sys.stderr
    if saved is sys.__stderr__:
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real_fd), "wb"), encoding=saved.encoding,
                                      errors=saved.errors, line_buffering=True)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = saved
        os.dup2(real_fd, 2)  # closes the pipe's last write end: the pump sees EOF
        os.close(real_fd)
        pump.join(timeout=5)
        real.close()
