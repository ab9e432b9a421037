"""The scheduler: pure logic that turns events into actions (see ``events``), split by concern."""

from synthpipe.runtime.scheduler.events import *  # noqa: F403
from synthpipe.runtime.scheduler.events import __doc__ as _doc

__doc__ = _doc
