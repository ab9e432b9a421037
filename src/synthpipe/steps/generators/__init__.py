from synthpipe.steps.generators.data import LoadDataFromDicts

__all__ = ["LoadDataFromDicts"]
