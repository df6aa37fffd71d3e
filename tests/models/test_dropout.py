import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from sdr_lightning.models.dropout import Dropout16, dropout16


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drops_that_share_and_keeps_the_expectation(p: float) -> None:
    torch.manual_seed(0)
    x = torch.full((250_001,), 3.0)  # not a multiple of four: the last draw is cut
    y = dropout16(x, p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 0.005
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 3.0 / (1 - p)), rtol=1e-4, atol=0)
    assert abs(y.double().mean().item() - 3.0) < 0.03


def test_masks_follow_the_global_seed_and_differ_between_calls() -> None:
    x = torch.ones(4, 8, 33)
    torch.manual_seed(7)
    first, second = dropout16(x, 0.3), dropout16(x, 0.3)
    torch.manual_seed(7)
    assert torch.equal(dropout16(x, 0.3), first)
    assert not torch.equal(first, second)


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 50, requires_grad=True)
    y = dropout16(x, 0.25)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() * (65536 / (65536 - 16384)))


def test_identity_in_eval_and_at_zero_zeros_at_one_and_rejects_bad_p() -> None:
    x = torch.randn(5, 7)
    layer = Dropout16(0.4).eval()
    assert layer(x) is x and dropout16(x, 0.0) is x
    assert torch.equal(dropout16(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout16(1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout16(x, -0.1)


def test_cnn_fast_dropout_keeps_the_checkpoint_layout_and_eval_outputs(make_cfg) -> None:
    """The option swaps a parameterless layer: the same weights load either way and give the same eval outputs."""
    plain = instantiate(make_cfg("model=cnn", "model.encoder.channels=8").model, _recursive_=False, _convert_="all")
    fast = instantiate(make_cfg("model=cnn", "model.encoder.channels=8", "model.encoder.fast_dropout=true").model,
                       _recursive_=False, _convert_="all")
    assert any(isinstance(m, Dropout16) for m in fast.modules())
    assert not any(isinstance(m, Dropout16) for m in plain.modules())
    assert any(isinstance(m, nn.Dropout) for m in plain.modules())
    fast.load_state_dict(plain.state_dict())
    waveform = torch.randn(3, 4000)
    lengths = torch.tensor([4000, 2500, 900])
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(waveform, lengths), plain.eval()(waveform, lengths))
    fast.train()
    torch.manual_seed(0)
    first = fast.encoder(torch.randn(2, 40, 30), torch.tensor([30, 20]))
    torch.manual_seed(0)
    assert torch.equal(fast.encoder(torch.randn(2, 40, 30), torch.tensor([30, 20])), first)
