"""Clustering steps: project embeddings (``UMAP``), then group them (``DBSCAN``); the labels
come from the ``TextClustering`` task. Each needs the ``clustering`` extra (imported lazily)."""

from synthpipe.steps.clustering.dbscan import DBSCAN
from synthpipe.steps.clustering.umap import UMAP

__all__ = ["DBSCAN", "UMAP"]
