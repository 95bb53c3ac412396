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


# ---- keypoint head -------------------------------------------------------------------------

def test_keypoint_head_starts_at_identity_and_learns():
    torch.manual_seed(0)
    net = GlobalNet(base_channels=4, levels=3, head="keypoints", keypoints=8, keypoint_level=1)
    x = inputs((2, 2, 16, 20, 12))
    out = net(x)
    assert out.shape == (2, 12)
    assert torch.allclose(out, torch.zeros(2, 12), atol=1e-6)
    out.square().sum().backward()  # zero there, but a target elsewhere pulls on the head
    (net(x)[:, 9] - 0.1).square().sum().backward()
    assert net.head.weight.grad.abs().sum() > 0


def test_keypoint_head_config_round_trips_and_rejects_bad_values():
    net = GlobalNet(base_channels=4, levels=3, head="keypoints", keypoints=6, keypoint_level=2, ridge=0.1)
    again = GlobalNet(**net.config)
    assert again.config == net.config and again.head.out_channels == 12
    assert "head" not in GlobalNet(base_channels=4, levels=3).config  # old metadata stays as it was
    with pytest.raises(ValueError, match="head must be"):
        GlobalNet(head="mlp")
    with pytest.raises(ValueError, match="keypoint_level"):
        GlobalNet(levels=3, head="keypoints", keypoint_level=3)


def test_fit_affine_params_recovers_an_affine_and_shrinks_to_identity():
    from labelreg.networks import fit_affine_params
    g = torch.Generator().manual_seed(1)
    fixed = torch.rand(3, 10, 3, generator=g, dtype=torch.float64) - 0.5
    linear = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    shift = 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    moving = fixed @ linear.transpose(1, 2) + shift[:, None]
    params = fit_affine_params(fixed, moving, ridge=0.0)
    assert torch.allclose(params[:, :9].view(3, 3, 3) + torch.eye(3, dtype=torch.float64), linear, atol=1e-9)
    assert torch.allclose(params[:, 9:], shift, atol=1e-9)
    # coincident points: the identity whatever the ridge; a huge ridge: the identity whatever the points
    assert torch.allclose(fit_affine_params(fixed, fixed, ridge=1e-2), torch.zeros(3, 12, dtype=torch.float64))
    assert fit_affine_params(fixed, moving, ridge=1e9).abs().max() < 1e-6


def test_keypoint_affine_maps_fixed_points_onto_moving_points_in_lps():
    """Peaked heatmaps at known voxels of an oblique network grid built from an anisotropic
    fixed grid: the affine from the fitted parameters takes each fixed point's LPS position to
    its moving point's LPS position."""
    from labelreg.networks import fit_affine_params, soft_argmax_points
    from labelreg.transforms import affine_from_params
    fixed_grid = Grid((40, 30, 24), (0.8, 1.3, 2.1), (5.0, -3.0, 12.0), tuple(rotation_matrix((0.3, -0.5, 0.8), 0.6).ravel()))
    net_grid = fixed_grid.resampled(3.0, multiple=8)
    nz, ny, nx = net_grid.shape_zyx
    g = np.random.default_rng(0)
    fixed_ijk = g.integers(2, [nx - 2, ny - 2, nz - 2], size=(12, 3))
    true_linear = np.eye(3) + 0.05 * g.standard_normal((3, 3))
    centre = (np.array([nx, ny, nz]) - 1) / 2
    moving_ijk = np.rint((fixed_ijk - centre) @ true_linear.T + centre + [1, -2, 1]).astype(int)
    moving_ijk = np.clip(moving_ijk, 0, [nx - 1, ny - 1, nz - 1])
    logits = torch.full((1, 24, nz, ny, nx), -1e4, dtype=torch.float64)
    for c, (i, j, k) in enumerate(np.concatenate([fixed_ijk, moving_ijk])):
        logits[0, c, k, j, i] = 0.0
    points = soft_argmax_points(logits, 1, (nz, ny, nx))
    params = fit_affine_params(points[:, :12], points[:, 12:], ridge=0.0)
    affine = affine_from_params(params, net_grid)[0].numpy()
    to_lps = net_grid.index_to_lps
    fixed_lps = fixed_ijk @ to_lps[:3, :3].T + to_lps[:3, 3]
    moving_lps = moving_ijk @ to_lps[:3, :3].T + to_lps[:3, 3]
    fitted = fixed_lps @ affine[:3, :3].T + affine[:3, 3]
    # the least-squares residual in voxels, scaled to mm, is what an exact check can compare
    linear, *_ = np.linalg.lstsq(np.c_[fixed_ijk, np.ones(12)], moving_ijk, rcond=None)
    expected = np.c_[fixed_ijk, np.ones(12)] @ linear
    expected_lps = expected @ to_lps[:3, :3].T + to_lps[:3, 3]
    assert np.allclose(fitted, expected_lps, atol=1e-6)
    assert np.abs(fitted - moving_lps).max() < 3.0 * 1.5  # rounding to voxels of 3 mm


def test_soft_argmax_on_a_pooled_level_finds_the_input_voxel():
    from labelreg.networks import soft_argmax_points
    shape = (16, 24, 8)
    logits = torch.full((1, 1, 4, 6, 2), -1e4)
    logits[0, 0, 1, 2, 0] = 0.0  # cell covering input voxels z 4..7, y 8..11, x 0..3
    point = soft_argmax_points(logits, 4, shape)[0, 0]
    scale = sum(shape) / 6
    expected = (torch.tensor([1.5, 9.5, 5.5]) - (torch.tensor([8, 24, 16]) - 1) / 2) / scale
    assert torch.allclose(point, expected)


def test_translation_only_global_net_keeps_the_linear_part():
    torch.manual_seed(0)
    for head in ("dense", "keypoints"):
        net = GlobalNet(base_channels=4, levels=3, head=head, keypoints=4, keypoint_level=1, dof="translation")
        nn.init.normal_(net.head.weight, std=0.1)  # far from the identity
        out = net(inputs((2, 2, 16, 20, 12)))
        assert torch.equal(out[:, :9], torch.zeros(2, 9)) and out[:, 9:].abs().min() > 0
        assert GlobalNet(**net.config).config["dof"] == "translation"
        assert "mask" not in net.state_dict()  # not a weight: old model files load unchanged
    with pytest.raises(ValueError, match="dof must be"):
        GlobalNet(dof="rigid")


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
