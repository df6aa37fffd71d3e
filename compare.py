"""Results table for a Hydra sweep: `python compare.py outputs/multirun/<date_time> [--out DIR] [--resamples N]`
(also installed as `sdr-compare`)."""

from sdr_lightning.cli import compare

if __name__ == "__main__":
    compare()
