from synthpipe.steps.generators.data import LoadDataFromDicts
from synthpipe.steps.generators.datasets_io import LoadDataFromDisk, LoadDataFromHub
from synthpipe.steps.generators.files import LoadDataFromFileSystem
from synthpipe.steps.generators.sampler import DataSampler

__all__ = ["DataSampler", "LoadDataFromDicts", "LoadDataFromDisk", "LoadDataFromFileSystem", "LoadDataFromHub"]
