"""VisionTales: a PyTorch Lightning framework for visual storytelling in both directions."""

__version__ = "0.1.0"
