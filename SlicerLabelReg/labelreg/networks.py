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


NORMS = ("instance", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    """Instance norm (default) behaves identically in training and inference, whatever the
    batch; batch norm is the paper's choice and is kept as an option."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    return nn.InstanceNorm3d(channels, affine=True) if kind == "instance" else nn.BatchNorm3d(channels)


class ResidualBlock(nn.Module):
    """conv-norm-ReLU, conv-norm, + 1x1 projection of the input, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance"):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, out_channels)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Encoder(nn.Module):
    """``levels`` residual blocks with channels base * 2**level, max-pooled between levels."""

    def __init__(self, in_channels: int, base_channels: int, levels: int, norm: str = "instance"):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.channels = [base_channels * 2**level for level in range(levels)]
        blocks, previous = [], in_channels
        for channels in self.channels:
            blocks.append(ResidualBlock(previous, channels, norm))
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


def _check_input(x: torch.Tensor, name: str, channels: int = 2):
    if x.dim() != 5 or x.shape[1] != channels:
        raise ValueError(f"{name} expects (B, {channels}, D, H, W) fixed+moving inputs, got {tuple(x.shape)}")


HEADS = ("dense", "keypoints")
#: what the global net may change: the full affine, or only the translation (params[:, 9:])
DOFS = ("affine", "translation")


class GlobalNet(nn.Module):
    """Encoder -> 12 affine parameters, exactly the identity before training.

    Two heads read the encoder:

    * ``"dense"`` (the paper's): adaptive average pooling to a small ``pooled_size`` (z, y, x)
      grid, which keeps the coarse spatial layout an affine needs, then a zero-initialised
      linear layer.
    * ``"keypoints"``: a 1x1 convolution on encoder level ``keypoint_level`` gives ``2 K``
      heatmaps; their soft-argmax are K points in the fixed image and K in the moving image,
      and the affine is the least-squares fit between them (ridge ``ridge`` towards the
      identity). Both sets come from the same concatenated input. The moving maps start as
      copies of the fixed maps, so the points coincide and the fit is the identity at
      initialisation. An affine read from point pairs follows the content when it moves, which
      a dense layer on pooled features has to learn from examples.

    Points are in voxels of the (isotropic) network grid, centred on the grid centre and
    divided by the mean half size, the units of :func:`labelreg.transforms.affine_from_params`.

    ``dof="translation"`` keeps only the three translation outputs (the linear part stays the
    identity): fewer degrees of freedom to learn from few pairs.
    """

    def __init__(self, base_channels: int = 8, levels: int = 4, pooled_size=(3, 4, 3), norm: str = "instance",
                 head: str = "dense", keypoints: int = 32, keypoint_level: int = 2, ridge: float = 1e-2,
                 dof: str = "affine"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if dof not in DOFS:
            raise ValueError(f"dof must be one of {DOFS}, got {dof!r}")
        if head == "keypoints" and not 0 <= keypoint_level < levels:
            raise ValueError(f"keypoint_level must be in [0, {levels - 1}], got {keypoint_level}")
        self.config = {"base_channels": base_channels, "levels": levels, "pooled_size": list(pooled_size), "norm": norm}
        if head != "dense":
            self.config.update(head=head, keypoints=keypoints, keypoint_level=keypoint_level, ridge=ridge)
        if dof != "affine":
            self.config["dof"] = dof
        self.register_buffer("mask", torch.tensor([float(dof == "affine")] * 9 + [1.0] * 3), persistent=False)
        self.encoder = Encoder(2, base_channels, levels, norm)
        self.pooled_size = tuple(int(n) for n in pooled_size)
        self.head_kind, self.keypoints, self.keypoint_level, self.ridge = head, keypoints, keypoint_level, ridge
        if head == "dense":
            self.head = nn.Linear(self.encoder.channels[-1] * int(torch.tensor(self.pooled_size).prod()), 12)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Conv3d(self.encoder.channels[keypoint_level], 2 * keypoints, 1)
            with torch.no_grad():  # moving maps = fixed maps at initialisation: identity affine
                self.head.weight[keypoints:] = self.head.weight[:keypoints]
                self.head.bias[keypoints:] = self.head.bias[:keypoints]
        self.multiple = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, D, H, W) -> (B, 12) affine parameters (zeros = identity)."""
        _check_input(x, "GlobalNet")
        x, shape = _pad_to_multiple(x, self.multiple)
        if self.head_kind == "dense":
            features = F.adaptive_avg_pool3d(self.encoder(x)[-1], self.pooled_size)
            return self.head(features.flatten(1)) * self.mask
        features = self.encoder(x)[self.keypoint_level]
        points = soft_argmax_points(self.head(features), 2**self.keypoint_level, shape)
        fixed_points, moving_points = points[:, : self.keypoints], points[:, self.keypoints:]
        return fit_affine_params(fixed_points, moving_points, self.ridge) * self.mask


def soft_argmax_points(logits: torch.Tensor, stride: int, shape) -> torch.Tensor:
    """Expected position of each heatmap, (B, C, d, h, w) -> (B, C, 3) in (i, j, k) order.

    The maps sit on a level pooled ``stride`` times from an input of size ``shape`` (z, y, x);
    cell ``n`` covers input voxels ``stride n .. stride (n + 1) - 1``. Positions are in input
    voxels from the input's centre, divided by the mean half size ``mean(shape) / 2``.
    """
    b, c = logits.shape[:2]
    weights = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)
    scale = sum(shape) / 6.0
    coords = []
    for axis in (4, 3, 2):  # x (i), y (j), z (k)
        n = logits.shape[axis]
        centres = (torch.arange(n, dtype=logits.dtype, device=logits.device) + 0.5) * stride - 0.5
        centres = (centres - (shape[axis - 2] - 1) / 2.0) / scale
        other = [d for d in (2, 3, 4) if d != axis]
        coords.append((weights.sum(dim=other) * centres).sum(-1))
    return torch.stack(coords, dim=-1).view(b, c, 3)


def fit_affine_params(fixed_points: torch.Tensor, moving_points: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares affine taking ``fixed_points`` to ``moving_points`` (both (B, K, 3)),
    with a ridge of weight ``ridge`` towards the identity, as the 12 parameters of
    :func:`labelreg.transforms.affine_from_params` (row-major ``L - I``, then translation)."""
    b, k, _ = fixed_points.shape
    ones = torch.ones(b, k, 1, dtype=fixed_points.dtype, device=fixed_points.device)
    x = torch.cat([fixed_points, ones], dim=-1)                    # (B, K, 4)
    eye = torch.eye(4, 3, dtype=x.dtype, device=x.device).expand(b, 4, 3)
    normal = x.transpose(1, 2) @ x + ridge * torch.eye(4, dtype=x.dtype, device=x.device)
    m = torch.linalg.solve(normal, x.transpose(1, 2) @ moving_points + ridge * eye)   # y = x @ m
    linear = m[:, :3].transpose(1, 2) - torch.eye(3, dtype=x.dtype, device=x.device)
    return torch.cat([linear.reshape(b, 9), m[:, 3]], dim=1)


class LocalNet(nn.Module):
    """U-Net-like encoder-decoder; a displacement is read out at every decoder level, upsampled
    trilinearly to the input size and summed (the paper's "summed DDF").

    ``in_channels``: 2 (fixed and moving image), or 4 with the two gland maps the localisers
    predict from those images (:attr:`ModelConfig.local_gland_inputs`)."""

    def __init__(self, base_channels: int = 16, levels: int = 4, norm: str = "instance", in_channels: int = 2):
        super().__init__()
        self.config = {"base_channels": base_channels, "levels": levels, "norm": norm, "in_channels": in_channels}
        self.in_channels = in_channels
        self.encoder = Encoder(in_channels, base_channels, levels, norm)
        channels = self.encoder.channels
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.outputs = nn.ModuleList([self._output(channels[-1])])
        for level in reversed(range(levels - 1)):
            self.up.append(nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2))
            self.decode.append(ResidualBlock(2 * channels[level], channels[level], norm))
            self.outputs.append(self._output(channels[level]))
        self.multiple = 2 ** (levels - 1)

    @staticmethod
    def _output(channels: int) -> nn.Conv3d:
        conv = nn.Conv3d(channels, 3, 3, padding=1)
        nn.init.normal_(conv.weight, mean=0.0, std=OUTPUT_INIT_STD)
        nn.init.normal_(conv.bias, mean=0.0, std=OUTPUT_INIT_STD)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, D, H, W) -> (B, 3, D, H, W) displacement in mm along the grid's (i, j, k) axes."""
        _check_input(x, "LocalNet", self.in_channels)
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
    the volume centres (LabelRegTraining/scripts/gland_localiser_pilot.py).
    """

    def __init__(self, base_channels: int = 16, levels: int = 3, norm: str = "instance"):
        super().__init__()
        self.config = {"base_channels": base_channels, "levels": levels, "norm": norm}
        self.encoder = Encoder(1, base_channels, levels, norm)
        channels = self.encoder.channels
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2)
                                for level in reversed(range(levels - 1)))
        self.decode = nn.ModuleList(ResidualBlock(2 * channels[level], channels[level], norm)
                                    for level in reversed(range(levels - 1)))
        self.output = nn.Conv3d(channels[0], 1, 1)
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
