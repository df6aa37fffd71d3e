"""What the commands do (train, evaluate, predict, export) and what they share: loading a trained run safely
(checkpoint), Hydra launching and resuming (launch) and training callbacks (callbacks)."""
