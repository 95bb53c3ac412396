"""The deciding experiment of issue 25: does the local net gain anything from the images inside
the gland beyond the gland's shape? This runs ``labelreg-train`` (fit / evaluate) with one change:
the local net's two input channels are the two gland localisers' probability maps (the TRUS's on
the network grid, the MR's through the alignment) instead of the two images. Same architecture,
same frozen localisers, same recipe (LabelRegTraining/configs/gland_overlap.json, local_only).

    python research/deciding/gland_maps_only.py fit --data DATA --fold F --config LabelRegTraining/configs/gland_overlap.json \
        --out runs/gm/foldF-s0 --stage local_only --init-from LOCALISER/best.pt --steps 600 --lr 1e-3 --lr-final 3e-5 \
        --val-every 150 --run-seed 0
    python research/deciding/gland_maps_only.py evaluate --data DATA --fold F --checkpoint runs/gm/foldF-s0/best.pt \
        --mode local --json gm-foldF-s0.json

Compare with ``labelreg-train compare RECIPE-fold*.json GM-fold*.json`` (paired per pair).
"""
import sys

import torch
from labelreg import model as model_module
from labelreg.transforms import ddf_grid_to_lps, transform_points
from labelreg.warp import sample


def forward_on_gland_maps(self, fixed_net, net_grid, moving, moving_grid, initial_lps, mode):
    if mode != "local":
        raise ValueError("the gland-maps-only variant is the bundled recipe's local_only model: mode 'local'")
    points = net_grid.points_lps(dtype=fixed_net.dtype, device=fixed_net.device)
    affine_lps = initial_lps.to(fixed_net.dtype)
    moving_net = sample(moving, moving_grid, transform_points(affine_lps, points))
    with torch.no_grad():  # the localisers stay frozen
        maps = [torch.sigmoid(self.localisers[role](image)) for role, image in (("fixed", fixed_net),
                                                                                 ("moving", moving_net))]
    ddf_grid = self.local_net(torch.cat(maps, dim=1))
    return affine_lps, ddf_grid_to_lps(ddf_grid, net_grid), net_grid, fixed_net


model_module.RegistrationModel.forward_on_grid = forward_on_gland_maps

if __name__ == "__main__":
    from labelreg_training.cli import main

    sys.exit(main(sys.argv[1:]))
