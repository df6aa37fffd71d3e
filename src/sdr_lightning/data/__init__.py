"""The clips: the metadata table and its splits (metadata), the FSDD download (download) and the datamodule."""
