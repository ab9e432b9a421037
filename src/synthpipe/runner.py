"""Old import path of :mod:`synthpipe.run.runner`, kept so existing imports work."""

import sys

from synthpipe.run import runner as _runner

sys.modules[__name__] = _runner
