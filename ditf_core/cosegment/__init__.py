"""Feature co-segmentation: K-means over the cells of a whole batch, so that cluster ids mean the same part in
every image. ``python -m ditf_core cosegment`` runs it on feature files; the pack's Co-Segment node on a batch.

    segmentation = cosegment(features, 4, seed=0)
    masks = segmentation.masks(0)  # [4, H, W] for image 0
"""

from .cosegment import BACKGROUND, MAX_CLUSTERS, CoSegmentation, ForegroundFn, cosegment
from .clustering import KMeansResult, kmeans, nearest_centres

__all__ = [
    "BACKGROUND",
    "MAX_CLUSTERS",
    "CoSegmentation",
    "ForegroundFn",
    "KMeansResult",
    "cosegment",
    "kmeans",
    "nearest_centres",
]
