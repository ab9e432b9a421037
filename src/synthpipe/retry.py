"""Old import path of :mod:`synthpipe.run.retry`, kept so existing imports work."""

import sys

from synthpipe.run import retry as _retry

sys.modules[__name__] = _retry
