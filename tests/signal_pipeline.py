"""A pipeline run as a separate program by the signal tests: ``python signal_pipeline.py
MODE SECONDS GRACE MARKER``. MODE is ``sleepy`` (slow batches), ``slowload`` (slow load()) or ``slowunload``."""

import sys

from steps_lib import Measure, Sleepy, SlowLoad, SlowUnload, rows
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

mode, seconds, grace, marker = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

with Pipeline(name=f"signals-{mode}", stop_grace_seconds=grace) as pipeline:
    load = LoadDataFromDicts(data=rows(200), batch_size=5)
    if mode == "sleepy":
        sleepy = Sleepy(name="sleepy", seconds=seconds, marker=marker, input_batch_size=5)
        load >> sleepy >> Measure(name="measure", input_batch_size=5)
    elif mode == "slowunload":
        load >> SlowUnload(name="slowunload", seconds=seconds, marker=marker) >> Measure(name="measure")
    else:
        load >> SlowLoad(name="slowload", seconds=seconds) >> Measure(name="measure")

if __name__ == "__main__":
    pipeline.run()
    print("RUN RETURNED")
