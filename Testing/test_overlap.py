"""The best-overlap gland translation (labelreg.overlap), in physical space, and as the model's
"gland" alignment: it finds the shift between two gland maps on oblique, anisotropic grids, and
unlike the centroids it is not pulled by a gland the TRUS field of view cuts or by a leak."""
import numpy as np
import pytest
import torch
from labelreg.engine import RegistrationEngine
from labelreg.grid import Grid
from labelreg.model import RAS_AXES_LPS, ModelConfig, RegistrationModel, probability_centroid_lps
from labelreg.overlap import overlap_translation_lps
from labelreg.phantom import rotation_matrix
from labelreg.volume import Volume
from test_gland_alignment import LOCALISER, Threshold
from torch import nn

FIXED = Grid((40, 30, 24), (1.1, 1.6, 2.3), (-20.0, -15.0, -25.0), tuple(rotation_matrix((0.3, -0.5, 0.8), 0.6).ravel()))
MOVING = Grid((36, 36, 30), (1.4, 1.2, 1.9), (10.0, -30.0, 5.0), tuple(rotation_matrix((-0.6, 0.2, 0.7), -0.4).ravel()))
AXES = rotation_matrix((0.2, 0.9, -0.3), 0.7)  # the gland's own axes, oblique to both grids
RADII_MM = np.array([13.0, 9.0, 7.0])
CENTRES_MM = MOVING.center_lps - FIXED.center_lps  # the shift that puts the fixed centre on the moving one


def gland(grid: Grid, centre_lps) -> np.ndarray:
    """An ellipsoidal gland (1 inside) centred at ``centre_lps``, shaped the same in every image."""
    local = (grid.points_lps(dtype=torch.float64).numpy() - np.asarray(centre_lps)) @ AXES
    return ((local / RADII_MM) ** 2).sum(-1).__lt__(1.0).astype(np.float32)


def as_map(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)[None, None]


def index_point(grid: Grid, ijk) -> np.ndarray:
    return grid.index_to_lps[:3, :3] @ np.asarray(ijk, dtype=np.float64) + grid.index_to_lps[:3, 3]


def test_overlap_translation_recovers_a_known_shift_between_oblique_anisotropic_grids():
    fixed_centre = FIXED.center_lps + [3.0, -2.0, 1.0]
    shift = CENTRES_MM + [4.0, -3.0, 2.0]
    moving_centre = fixed_centre + shift
    fixed_p, moving_p = as_map(gland(FIXED, fixed_centre)), as_map(gland(MOVING, moving_centre))
    start = torch.tensor(shift + [6.0, -5.0, 4.0])[None]  # a start 8.8 mm off
    found = overlap_translation_lps(fixed_p, FIXED, moving_p, MOVING, start, radius_mm=12.0)
    assert found.dtype == start.dtype and found.shape == (1, 3)
    assert np.linalg.norm(found[0].numpy() - shift) < 0.8  # below the 1.1-2.3 mm voxels


def test_overlap_translation_is_batched_and_checks_its_inputs():
    fixed_centre = FIXED.center_lps
    shifts = [CENTRES_MM + [2.0, 3.0, -1.0], CENTRES_MM + [-4.0, 0.0, 3.0]]
    fixed_p = as_map(gland(FIXED, fixed_centre)).repeat(2, 1, 1, 1, 1)
    moving_p = torch.cat([as_map(gland(MOVING, fixed_centre + s)) for s in shifts])
    start = torch.tensor(np.stack(shifts)) + torch.tensor([[4.0, 0.0, 0.0], [0.0, -5.0, 3.0]])
    found = overlap_translation_lps(fixed_p, FIXED, moving_p, MOVING, start).numpy()
    assert np.linalg.norm(found - np.stack(shifts), axis=1).max() < 0.8
    with pytest.raises(ValueError, match="same B"):
        overlap_translation_lps(fixed_p, FIXED, moving_p[:1], MOVING, start)
    with pytest.raises(ValueError, match="radius_mm"):
        overlap_translation_lps(fixed_p, FIXED, moving_p, MOVING, start, radius_mm=0.0)


@pytest.mark.parametrize("fault", ["cut by the field of view", "leak"])
def test_overlap_translation_is_not_pulled_by_a_cut_gland_or_a_leak(fault):
    """The centroid translation is several mm off; the best overlap is not."""
    if fault == "cut by the field of view":  # the gland's centre on a face of the TRUS volume
        fixed_centre = index_point(FIXED, [19.5, 14.5, 0.0])
        fixed = gland(FIXED, fixed_centre)
    else:  # the localiser also marks a smaller blob beside the gland
        fixed_centre = FIXED.center_lps
        fixed = np.maximum(gland(FIXED, fixed_centre), gland(FIXED, fixed_centre + AXES[:, 0] * 17.0) *
                           (np.linalg.norm(FIXED.points_lps(dtype=torch.float64).numpy() - fixed_centre -
                                           AXES[:, 0] * 17.0, axis=-1) < 6.0))
    shift = MOVING.center_lps - fixed_centre + [2.0, -1.0, 3.0]
    fixed_p, moving_p = as_map(fixed), as_map(gland(MOVING, fixed_centre + shift))
    centroids = [probability_centroid_lps(p, g)[0][0].numpy() for p, g in ((fixed_p, FIXED), (moving_p, MOVING))]
    by_centroids = centroids[1] - centroids[0]
    assert np.linalg.norm(by_centroids - shift) > 2.5
    found = overlap_translation_lps(fixed_p, FIXED, moving_p, MOVING, torch.tensor(by_centroids)[None])[0].numpy()
    assert np.linalg.norm(found - shift) < 1.0


def test_the_gland_alignment_of_an_overlap_model_keeps_the_fixed_centroid_and_lands_the_cut_gland():
    """Through the engine, on images: the "overlap" model starts where the glands overlap
    (fixed -> moving LPS), the "centroid" model where the centroids of the cut gland put it.
    The TRUS is stored along the model's frame axes, so the localiser's grid ends where the TRUS
    does (an oblique TRUS is seen on the box around it, where the search counts the corners too)."""
    fixed_grid = Grid(FIXED.size, FIXED.spacing, FIXED.origin, RAS_AXES_LPS)
    fixed_centre = index_point(fixed_grid, [19.5, 14.5, 0.0])
    shift = MOVING.center_lps - fixed_centre + [2.0, -1.0, 3.0]
    fixed = Volume(gland(fixed_grid, fixed_centre), fixed_grid, "TRUS")
    moving = Volume(gland(MOVING, fixed_centre + shift), MOVING, "MR")
    errors = {}
    for how in ("centroid", "overlap"):
        torch.manual_seed(0)
        model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER, gland_translation=how))
        model.localisers = nn.ModuleDict({"fixed": Threshold(), "moving": Threshold()})
        result = RegistrationEngine(model.eval(), device="cpu").register(fixed, moving, mode="affine")
        np.testing.assert_allclose(result.initial_lps[:3, :3], np.eye(3), atol=1e-6)
        errors[how] = np.linalg.norm(result.initial_lps[:3, 3] - shift)
    assert errors["centroid"] > 2.5 and errors["overlap"] < 1.5  # the 3 mm localiser grid


def test_gland_translation_options_are_checked():
    with pytest.raises(ValueError, match="gland_translation"):
        ModelConfig(initial_alignment="gland", localiser=LOCALISER, gland_translation="centre")
    with pytest.raises(ValueError, match="overlap_radius_mm"):
        ModelConfig(initial_alignment="gland", localiser=LOCALISER, overlap_radius_mm=0.0)
    config = ModelConfig(initial_alignment="gland", localiser=LOCALISER, gland_translation="overlap")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "gland_translation"}
                                 ).gland_translation == "centroid"  # models saved before the option


def test_a_model_file_of_format_1_still_loads_and_aligns_by_centroids(tmp_path):
    """Model files written before ``gland_translation`` (format 1) load as centroid models; a
    format-4 file is what this LabelReg writes."""
    import json

    from labelreg.model import FORMAT_VERSION
    from labelreg.model_io import load_model, save_model, sha256_of, sidecar_path
    model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER, gland_translation="overlap"))
    path = save_model(tmp_path / "m.pt", model)
    assert FORMAT_VERSION == 4 and load_model(path)[0].config.gland_translation == "overlap"
    old = torch.load(path, weights_only=True)
    old["format_version"] = 1
    old["config"] = {k: v for k, v in old["config"].items() if k not in ("gland_translation", "overlap_radius_mm")}
    torch.save(old, path)
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps(meta | {"format_version": 1, "sha256": sha256_of(path)}))
    loaded, _ = load_model(path)
    assert loaded.config.gland_translation == "centroid"
