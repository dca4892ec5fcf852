"""wagon-detector: count railcars and shipping containers in overhead imagery."""

__version__ = "0.1.0"
