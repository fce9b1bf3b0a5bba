"""Signalling a process group: the one place that knows which errors mean "nothing left to signal"."""

from __future__ import annotations

import os


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`. False when the group is gone or may not be signalled
    (a member runs as another user, e.g. a setuid binary): nothing more can be done about it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
