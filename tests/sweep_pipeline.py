"""A short pipeline run as a program by the start-up sweep: ``python sweep_pipeline.py JOURNAL STARTED``.
It touches STARTED just before ``run()``, so a signal can be sent at a known moment after it."""

import sys
from pathlib import Path

from steps_lib import Journal, rows
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

journal, started = sys.argv[1], sys.argv[2]

with Pipeline(name="sweep", stop_grace_seconds=20) as pipeline:
    LoadDataFromDicts(data=rows(60), batch_size=5) >> Journal(name="journal", path=journal, delay=0.1,
                                                               input_batch_size=5)

if __name__ == "__main__":
    Path(started).touch()
    pipeline.run()
    print("RUN RETURNED")
