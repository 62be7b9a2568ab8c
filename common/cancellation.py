"""A cancel that a library let slip past the task it was meant for.

On Python 3.11, asyncio.wait_for drops a cancel that lands as what it awaits finishes (CPython
gh-86296, fixed in 3.12): it returns the result, or raises the failure, instead of CancelledError.
aiopg awaits every connect and every statement through it. The task is left marked as cancelling
yet runs on, so a loop that goes round again never ends, and the shutdown awaiting it waits for ever.
"""

import asyncio


def cancel_dropped() -> bool:
    """Whether the running task was cancelled yet carries on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def honour_dropped_cancel() -> None:
    """Raise the cancel the running task was sent and never got; a loop calls this each round."""
    if cancel_dropped():
        raise asyncio.CancelledError
