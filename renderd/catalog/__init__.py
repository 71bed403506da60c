"""The catalog of raster datasets (the header cache); see ``model``."""

from .model import BandStats, Bounds, Dataset

__all__ = ["BandStats", "Bounds", "Dataset"]
