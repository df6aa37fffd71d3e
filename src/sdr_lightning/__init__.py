"""sdr-lightning: speaker-independent spoken digit recognition with Lightning and Hydra."""

__version__ = "0.5.0"
