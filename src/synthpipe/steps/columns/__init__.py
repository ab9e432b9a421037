"""Steps that reshape rows: keep, group, merge, expand, combine and truncate columns."""

from synthpipe.steps.columns.expand import ExpandColumns
from synthpipe.steps.columns.group import CombineOutputs, GroupColumns
from synthpipe.steps.columns.keep import KeepColumns
from synthpipe.steps.columns.merge import MergeColumns
from synthpipe.steps.columns.truncate import TruncateTextColumn

__all__ = ["CombineOutputs", "ExpandColumns", "GroupColumns", "KeepColumns", "MergeColumns", "TruncateTextColumn"]
