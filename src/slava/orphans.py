"""Worker processes that exit with their parent.

A pool worker blocked on its task queue outlives a parent killed with
``kill -9``, holding its memory until someone notices. ``exit_with_parent``,
run as a pool initializer, starts a daemon thread that ends the worker as soon
as its parent process is gone. A polling thread rather than
``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when the parent
*thread* that forked the worker ends, which a pool may do from a helper thread.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.2
"""How often a worker checks that its parent is alive."""


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            # Re-parented (to init or a subreaper): the parent died. No cleanup is owed to anyone.
            os._exit(1)
        time.sleep(POLL_S)


def exit_with_parent(parent: int | None = None) -> None:
    """End this process when its parent dies; call it in the worker, e.g. as a pool initializer.

    ``parent`` is the parent's PID as the parent saw it (``os.getpid()`` passed
    in ``initargs``): a worker still starting up when the parent died is already
    re-parented, so its own ``os.getppid()`` would watch the wrong process.
    None takes ``os.getppid()`` now (for workers forked by a fork server).
    """
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="slava-exit-with-parent", daemon=True).start()
