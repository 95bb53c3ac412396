"""GlobalNet / LocalNet behaviour at initialisation, odd input sizes, errors, and gradients."""
import numpy as np
import pytest
import torch
from labelreg.grid import Grid
from labelreg.networks import GlobalNet, LocalNet
from labelreg.phantom import rotation_matrix
from labelreg.warp import sample
from torch import nn


def inputs(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_global_net_starts_at_identity():
    torch.manual_seed(0)
    net = GlobalNet(base_channels=4, levels=3)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        out = net(inputs((2, 2, 16, 20, 12)))
        assert out.shape == (2, 12)
        assert torch.equal(out, torch.zeros(2, 12))


def test_local_net_starts_near_zero_and_outputs_are_plain_convolutions():
    torch.manual_seed(0)
    net = LocalNet(base_channels=4, levels=3).eval()
    x = inputs((1, 2, 16, 24, 16))
    ddf = net(x)
    assert ddf.shape == (1, 3, 16, 24, 16)
    assert 0 < ddf.abs().max() < 1e-3
    assert len(net.outputs) == 3  # one read-out per decoder level
    for conv in net.outputs:
        assert isinstance(conv, nn.Conv3d) and conv.out_channels == 3 and conv.bias is not None
    # no normalisation or activation after the read-outs: with zero weights the output is exactly
    # the sum of the biases, negative components included (a ReLU or BN would change it)
    bias = torch.tensor([-1.5, 0.25, -3.0])
    with torch.no_grad():
        for conv in net.outputs:
            conv.weight.zero_()
            conv.bias.copy_(bias / len(net.outputs))
    out = net(x)
    torch.testing.assert_close(out, bias.view(1, 3, 1, 1, 1).expand_as(out), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 2, 23, 31, 19), (2, 2, 9, 8, 17), (1, 2, 5, 5, 5)])
def test_odd_input_sizes(shape):
    torch.manual_seed(0)
    local, global_ = LocalNet(base_channels=4, levels=4).eval(), GlobalNet(base_channels=4, levels=4).eval()
    x = inputs(shape)
    assert local(x).shape == (shape[0], 3) + shape[2:]
    assert global_(x).shape == (shape[0], 12)


def test_padding_does_not_shift_the_output():
    """The field for an odd-sized input is the field of the replicate-padded input, cropped
    at the far end (the padding is only added after the last voxel)."""
    torch.manual_seed(0)
    net = LocalNet(base_channels=4, levels=3).eval()
    with torch.no_grad():
        for conv in net.outputs:
            conv.weight.normal_(0, 0.1)
    x = inputs((1, 2, 13, 16, 10))
    padded = torch.nn.functional.pad(x, (0, 2, 0, 0, 0, 3), mode="replicate")
    torch.testing.assert_close(net(x), net(padded)[:, :, :13, :16, :10])


@pytest.mark.parametrize("shape", [(1, 1, 8, 8, 8), (1, 3, 8, 8, 8), (2, 8, 8, 8), (1, 2, 8, 8)])
def test_bad_input_shapes_raise(shape):
    for net in (GlobalNet(base_channels=2, levels=2), LocalNet(base_channels=2, levels=2)):
        with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
            net(torch.zeros(shape))


def test_invalid_levels():
    with pytest.raises(ValueError, match="levels"):
        LocalNet(base_channels=4, levels=0)


def test_sample_gradcheck():
    grid = Grid((4, 5, 3), (0.8, 1.3, 2.1), (1.0, -2.0, 3.0), rotation_matrix((0.3, -0.5, 0.8), 0.6).ravel())
    volume = torch.rand(1, 2, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    ijk = rng.uniform(0.2, np.asarray(grid.size) - 1.2, size=(2, 2, 3, 3))  # inside, off the voxel lattice
    m = grid.index_to_lps
    points = torch.as_tensor(ijk @ m[:3, :3].T + m[:3, 3])[None]
    volume.requires_grad_(True)
    points.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, p: sample(v, grid, p), (volume, points), eps=1e-6, atol=1e-5)


def test_gradients_reach_both_networks():
    torch.manual_seed(0)
    local, global_ = LocalNet(base_channels=4, levels=3), GlobalNet(base_channels=4, levels=3)
    x = inputs((2, 2, 16, 16, 16))
    (local(x) ** 2).sum().backward()
    (global_(x) ** 2 + global_(x).sum()).sum().backward()
    assert local.encoder.blocks[0].conv1.weight.grad.abs().sum() > 0
    assert all(conv.weight.grad.abs().sum() > 0 for conv in local.outputs)
    assert global_.head.bias.grad.abs().sum() > 0 and global_.head.weight.grad.abs().sum() > 0


# ---- gland localiser -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 13, 22, 9)])
def test_gland_localiser_keeps_the_input_size(shape):
    from labelreg.networks import GlandLocaliser
    net = GlandLocaliser(base_channels=4, levels=3)
    assert net(inputs(shape)).shape == shape
    assert GlandLocaliser(**net.config).config == net.config
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        net(inputs((1, 2, 16, 16, 16)))


def test_gland_localiser_learns_a_bright_blob():
    """A few steps on images whose target is the bright blob in them: the logits move the right way."""
    from labelreg.networks import GlandLocaliser
    torch.manual_seed(0)
    net = GlandLocaliser(base_channels=4, levels=2)
    zz, yy, xx = torch.meshgrid(*(torch.arange(12.0),) * 3, indexing="ij")
    targets = torch.stack([((zz - c) ** 2 + (yy - 6) ** 2 + (xx - 12 + c) ** 2 < 9).float() for c in (4.0, 7.0)])[:, None]
    images = targets + 0.1 * inputs(targets.shape)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
