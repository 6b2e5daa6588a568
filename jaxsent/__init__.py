"""jaxsent: calibration-minded sentiment classification in JAX and Flax NNX."""

__version__ = "0.1.0"
