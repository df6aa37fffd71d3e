"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): one scalar T divides the
logits so that the softmax's top probability means what it says (of the clips given 0.9, about 9 in 10 right).
Argmax, and so accuracy, does not change.

The classifier fits T on its validation clips after every validation pass (`DigitClassifier(calibrate=True)`), so
each checkpoint carries the T of its own weights. The recipes here are far from calibrated as trained: averaged
ensemble members, label smoothing and each clip's own BatchNorm statistics all flatten the softmax (the default CNN's
median top probability on DEV is 0.39 at 93% accuracy), and a confidence gate (sequence.min_confidence) then means
something different for every model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# T outside this range means the validation logits carry no usable signal (e.g. all one class): keep it finite
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.02, 50.0


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T > 0 that minimises the cross entropy of softmax(logits / T) against `labels` ((N, C) and (N,)); 1.0
    with no clips. The loss is convex in 1/T: L-BFGS on log(1/T) from T = 1 finds it in a few steps."""
    if len(labels) == 0:
        return 1.0
    z = logits.detach().double()
    y = labels.detach().long()
    log_beta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_beta], lr=1.0, max_iter=100, tolerance_grad=1e-9,
                                  line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(z * log_beta.exp(), y)
        value.backward()
        return value

    with torch.enable_grad():  # called from validation hooks, where Lightning turns gradients off
        optimizer.step(loss)
    temperature = float((-log_beta.detach()).exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


# The digit-string gate of a checkpoint (sequence.min_confidence=auto): the raw top probability under which this share
# of its right answers on the clean validation clips fall. 1.5% is where experiment=robust_cnn seed 1 puts the gate 0.3
# chosen for it on DEV strings (docs/digit_strings.md); a model less sure of itself gets a lower gate.
GATE_QUANTILE = 0.015


def confidence_gate(logits: Tensor, labels: Tensor, quantile: float = GATE_QUANTILE) -> float:
    """The `quantile` of softmax(logits)'s top probability over the clips whose argmax is their label; 0.0 (no gate)
    when none is right."""
    top = logits.detach().float().softmax(dim=-1).max(dim=-1)
    right = top.values[top.indices == labels]
    if len(right) == 0:
        return 0.0
    return float(right.sort().values[int(quantile * len(right))])
