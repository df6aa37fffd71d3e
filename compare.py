"""Results table for a Hydra sweep: `python compare.py outputs/multirun/<date_time> [--out DIR] [--resamples N]`."""

from sdr_lightning.compare import main

if __name__ == "__main__":
    main()
