"""Audio in: decoding files (io), features the model owns (features) and training-time augmentation (augment)."""
