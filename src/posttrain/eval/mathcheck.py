"""Is a model's answer to a math problem right? math-verify, with our own time limit.

`check(response, reference, timeout_s)` extracts the final answer from a
response ("... so the answer is \\boxed{42}.", "The answer is 0.5", "x = 3")
and compares it with the reference symbolically (1/2 == 0.5 == \\frac{1}{2}).

math-verify bounds its own work with SIGALRM, which works only in the main
thread; its timeouts are switched off here (`parsing_timeout=None`,
`timeout_seconds=None`) and every check runs on a worker thread instead, the
caller waiting at most `timeout_s`. Python cannot stop a thread: a check that
times out is left to finish on its own. The workers are daemon threads, so a
check that never finishes cannot keep the process from exiting (the threads of
a `concurrent.futures.ThreadPoolExecutor` are joined at exit, so one hung check
would hang the stage at its end), and at most `MAX_RUNNING` checks run at
once, so hung checks cannot pile up without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import cache

MAX_RUNNING = 4  # checks running at once, timed-out ones still finishing included

# MathCheck.kind: why a check could not say whether the answer is right.
UNPARSABLE_REFERENCE = "unparsable reference"  # the reference, not the response, is at fault
TIMED_OUT = "timed out"
RAISED = "raised"

_slots = threading.BoundedSemaphore(MAX_RUNNING)


@dataclass(frozen=True)
class MathCheck:
    correct: bool
    problem: str | None = None  # what kept the check from an answer; None when it ran to the end
    kind: str | None = None  # UNPARSABLE_REFERENCE, TIMED_OUT or RAISED when `problem` is set

    @property
    def ok(self) -> bool:
        return self.problem is None


class _LoudTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeouts are off; they are off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@cache
def _math_verify():
    """math-verify, imported (and its extraction regexes compiled) once, in the
    caller's thread, so that the first check's time limit is not spent on that."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_LoudTimeoutWarning())
    math_verify.parse("$1$", parsing_timeout=None)
    return math_verify


def reference_text(reference: object) -> str:
    """A reference in a form math-verify extracts whole: plain references
    ("42", "1/2", "\\frac{1}{2}", "x=3") go inside \\boxed{}; references that
    already carry math delimiters or a box (e.g. a worked solution) are kept."""
    text = str(reference).strip()
    if any(marker in text for marker in ("\\boxed", "$", "\\(", "\\[")):
        return text
    return f"\\boxed{{{text}}}"


def _is_math(parsed: list) -> bool:
    """Whether a parse found an expression: math-verify falls back to the raw
    matched string, which it can only compare as text."""
    return any(not isinstance(p, str) for p in parsed)


def _check(response: str, reference: object) -> MathCheck:
    mv = _math_verify()
    text = reference_text(reference)
    gold = mv.parse(text, parsing_timeout=None)
    if not _is_math(gold) and text != str(reference).strip():
        gold = mv.parse(str(reference).strip(), parsing_timeout=None)
    if not _is_math(gold):
        return MathCheck(False, f"reference could not be parsed as math: {_clip(str(reference))!r}", UNPARSABLE_REFERENCE)
    pred = mv.parse(response, parsing_timeout=None)
    if not pred:
        return MathCheck(False)  # no answer found in the response: wrong, not a grader problem
    # gold first: verify() is not symmetric (an assignment "x=3" as gold accepts "3").
    return MathCheck(bool(mv.verify(gold, pred, timeout_seconds=None)))


def check(response: str, reference: object, timeout_s: float) -> MathCheck:
    """Whether `response`'s final answer equals `reference` (a number, or a
    LaTeX/plain string). Never raises on a bad input; a problem is reported in
    the result (`kind`): the reference could not be parsed, the check took
    longer than `timeout_s`, or math-verify raised."""
    _math_verify()
    deadline = time.monotonic() + timeout_s
    if not _slots.acquire(timeout=timeout_s):
        return MathCheck(False, f"timed out after {timeout_s:g}s: all {MAX_RUNNING} math-verify workers busy with earlier checks", TIMED_OUT)
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(_check(response, reference))
        except BaseException as e:  # math-verify's TimeoutException is a BaseException
            future.set_exception(e)
        finally:
            _slots.release()

    threading.Thread(target=work, name="mathcheck", daemon=True).start()
    try:
        return future.result(timeout=max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        # The thread is left to finish (threads cannot be stopped); its slot
        # comes back when it does.
        return MathCheck(False, f"timed out after {timeout_s:g}s on response {_clip(response)!r}", TIMED_OUT)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return MathCheck(False, f"math-verify raised {type(e).__name__}: {_clip(str(e))}", RAISED)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
