"""After training: predictions and their report files, embeddings, significance tests and sweep tables.

Nothing here imports torch, so compare.py and sdr-significance start in a moment.
"""
