"""The two networks of Hu et al. 2018, "Weakly-supervised convolutional neural networks for
multimodal image registration" (arXiv 1711.01666).

Both take a (B, 2, D, H, W) tensor: channel 0 the fixed (TRUS) image, channel 1 the moving
(MR) image already resampled onto the same network grid. Labels are never inputs.

* :class:`GlobalNet` -> (B, 12) affine parameters, exactly zero (identity) at initialisation;
  :func:`labelreg.transforms.affine_from_params` turns them into an LPS matrix.
* :class:`LocalNet` -> (B, 3, D, H, W) displacement in mm along the grid axes, summed from
  every decoder level; output layers are plain convolutions with bias (no normalisation, no
  activation) initialised with zero mean and a small variance.

Inputs of any size are padded internally to a multiple of ``2**(levels-1)`` and the outputs
cropped back, so callers never see a "divisible by 16" error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_INIT_STD = 1e-6


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that, on the CPU without gradients (inference), always runs oneDNN's kernel.

    PyTorch picks its kernel by a rule written for 2-D images (it counts N x C x D x H, not W):
    for one small 3-D volume, as at inference here, it falls back to its slow reference kernel,
    about 10x slower than oneDNN for a 16-channel 3x3x3 layer (measured: see the model card, "Speed").
    The two agree to float rounding (~1e-6); training, with gradients, is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and self.padding_mode == "zeros" and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super().forward(x)


def _norm(channels: int) -> nn.Module:
    """Instance norm: it behaves identically in training and inference, whatever the batch."""
    return nn.InstanceNorm3d(channels, affine=True)


class ResidualBlock(nn.Module):
    """conv-norm-ReLU, conv-norm, + 1x1 projection of the input, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = _norm(out_channels)
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(out_channels)
        self.skip = nn.Identity() if in_channels == out_channels else Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Encoder(nn.Module):
    """``levels`` residual blocks with channels base * 2**level, max-pooled between levels."""

    def __init__(self, in_channels: int, base_channels: int, levels: int):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.channels = [base_channels * 2**level for level in range(levels)]
        blocks, previous = [], in_channels
        for channels in self.channels:
            blocks.append(ResidualBlock(previous, channels))
            previous = channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x) -> list:
        features = []
        for level, block in enumerate(self.blocks):
            if level:
                x = F.max_pool3d(x, 2)
            x = block(x)
            features.append(x)
        return features


def _pad_to_multiple(x: torch.Tensor, multiple: int):
    """Pad (replicate) each spatial size up to a multiple of ``multiple`` and at least
    2 * ``multiple``, so the deepest level keeps more than one voxel per axis."""
    shape = x.shape[2:]
    padded = [max(-(-n // multiple) * multiple, 2 * multiple) - n for n in shape]
    if not any(padded):
        return x, shape
    # F.pad takes (W_left, W_right, H_left, H_right, D_left, D_right)
    pad = []
    for p in reversed(padded):
        pad += [0, p]
    return F.pad(x, pad, mode="replicate"), shape


def _check_input(x: torch.Tensor, name: str):
    if x.dim() != 5 or x.shape[1] != 2:
        raise ValueError(f"{name} expects (B, 2, D, H, W) fixed+moving inputs, got {tuple(x.shape)}")


class GlobalNet(nn.Module):
    """Encoder -> 12 affine parameters, exactly the identity before training: adaptive average
    pooling to a small ``pooled_size`` (z, y, x) grid, which keeps the coarse spatial layout an
    affine needs, then a zero-initialised linear layer (the paper's dense head)."""

    def __init__(self, base_channels: int = 8, levels: int = 4, pooled_size=(3, 4, 3)):
        super().__init__()
        self.config = {"base_channels": base_channels, "levels": levels, "pooled_size": list(pooled_size)}
        self.encoder = Encoder(2, base_channels, levels)
        self.pooled_size = tuple(int(n) for n in pooled_size)
        self.head = nn.Linear(self.encoder.channels[-1] * int(torch.tensor(self.pooled_size).prod()), 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.multiple = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, D, H, W) -> (B, 12) affine parameters (zeros = identity)."""
        _check_input(x, "GlobalNet")
        x, _ = _pad_to_multiple(x, self.multiple)
        features = F.adaptive_avg_pool3d(self.encoder(x)[-1], self.pooled_size)
        return self.head(features.flatten(1))


class LocalNet(nn.Module):
    """U-Net-like encoder-decoder; a displacement is read out at every decoder level, upsampled
    trilinearly to the input size and summed (the paper's "summed DDF")."""

    def __init__(self, base_channels: int = 16, levels: int = 4):
        super().__init__()
        self.config = {"base_channels": base_channels, "levels": levels}
        self.encoder = Encoder(2, base_channels, levels)
        channels = self.encoder.channels
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.outputs = nn.ModuleList([self._output(channels[-1])])
        for level in reversed(range(levels - 1)):
            self.up.append(nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2))
            self.decode.append(ResidualBlock(2 * channels[level], channels[level]))
            self.outputs.append(self._output(channels[level]))
        self.multiple = 2 ** (levels - 1)

    @staticmethod
    def _output(channels: int) -> Conv3d:
        conv = Conv3d(channels, 3, 3, padding=1)
        nn.init.normal_(conv.weight, mean=0.0, std=OUTPUT_INIT_STD)
        nn.init.normal_(conv.bias, mean=0.0, std=OUTPUT_INIT_STD)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, D, H, W) -> (B, 3, D, H, W) displacement in mm along the grid's (i, j, k) axes."""
        _check_input(x, "LocalNet")
        x, shape = _pad_to_multiple(x, self.multiple)
        features = self.encoder(x)
        y = features[-1]
        full = x.shape[2:]
        ddf = F.interpolate(self.outputs[0](y), size=full, mode="trilinear", align_corners=False)
        for up, decode, output, skip in zip(self.up, self.decode, self.outputs[1:], reversed(features[:-1])):
            y = decode(torch.cat([up(y), skip], dim=1))
            level_ddf = output(y)
            if level_ddf.shape[2:] != full:
                level_ddf = F.interpolate(level_ddf, size=full, mode="trilinear", align_corners=False)
            ddf = ddf + level_ddf
        return ddf[:, :, : shape[0], : shape[1], : shape[2]]


class GlandLocaliser(nn.Module):
    """A small one-image U-Net: (B, 1, D, H, W) image -> (B, 1, D, H, W) gland logits.

    Trained with the gland label as its *target* (labels are never inputs). The centroid of
    its prediction in each image gives a translation initial alignment: over the 81 MR-TRUS
    pairs, predicted gland centroids leave a median landmark TRE of 6.5 mm against 11.6 mm for
    the volume centres (measured when the localisers were introduced; see the model card).
    """

    def __init__(self, base_channels: int = 16, levels: int = 3):
        super().__init__()
        self.config = {"base_channels": base_channels, "levels": levels}
        self.encoder = Encoder(1, base_channels, levels)
        channels = self.encoder.channels
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2)
                                for level in reversed(range(levels - 1)))
        self.decode = nn.ModuleList(ResidualBlock(2 * channels[level], channels[level])
                                    for level in reversed(range(levels - 1)))
        self.output = Conv3d(channels[0], 1, 1)
        self.multiple = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"GlandLocaliser expects (B, 1, D, H, W) images, got {tuple(x.shape)}")
        x, shape = _pad_to_multiple(x, self.multiple)
        features = self.encoder(x)
        y = features[-1]
        for up, decode, skip in zip(self.up, self.decode, reversed(features[:-1])):
            y = decode(torch.cat([up(y), skip], dim=1))
        return self.output(y)[:, :, : shape[0], : shape[1], : shape[2]]
