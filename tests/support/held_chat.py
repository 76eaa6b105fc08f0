"""`python tests/support/held_chat.py MARKER CHAT_ARGS...`: `minimind-studio chat CHAT_ARGS...` as the console
script runs it, on this process's terminal (stdin must be a terminal: it becomes the controlling one, so a
Ctrl-C typed there is this process's SIGINT), except that the first reply holds inside generation after
HOLD_AT tokens and writes MARKER (this process's pid) until a signal ends the wait.

Why: the tiny test model writes a whole reply in milliseconds, so a Ctrl-C typed "mid-reply" would land
there only by luck. Holding generation makes "Ctrl-C while the reply streams" certain, at the place a long
reply spends its time (inside the session's generator); the terminal, the signal, the CLI and the model are
real. The held reply ignores end-of-text so it always gets that far. `hold_first_reply` is the same hold
for an in-process test, which raises KeyboardInterrupt there itself.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOLD_AT = 4


def hold_first_reply(session_module: Any, on_hold: Callable[[], None], at: int = HOLD_AT) -> None:
    """Make engine.chat.session's first generation call on_hold() once `at` tokens are out (ignoring
    end-of-text until then); later replies generate as they do."""
    real = session_module.generate
    replies = 0

    def held(model, prompt_ids, sampling, stop_ids=(), use_cache=True):
        nonlocal replies
        replies += 1
        if replies > 1:
            yield from real(model, prompt_ids, sampling, stop_ids, use_cache=use_cache)
            return
        for index, token in enumerate(real(model, prompt_ids, sampling, (), use_cache=use_cache)):
            yield token
            if index + 1 == at:
                on_hold()

    session_module.generate = held


def main(marker: Path, chat_args: list[str]) -> int:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # this new session's terminal: ^C typed there is our SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the test runner ignores SIGINT

    import engine.chat.session
    from studio.cli import main as cli

    def wait_for_ctrl_c() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # KeyboardInterrupt raised here, inside the generator, as in a long generation

    hold_first_reply(engine.chat.session, wait_for_ctrl_c)
    return cli(["chat", *chat_args])


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
