"""Digit strings from one recording: voice-activity detection, segmentation, streaming (issue 16)."""
