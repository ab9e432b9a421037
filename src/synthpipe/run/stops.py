"""What ``Pipeline.run`` holds around the whole run: stop signals taken over from its first line."""

from synthpipe.runtime.signals import stops_deferred

__all__ = ["stops_deferred"]
