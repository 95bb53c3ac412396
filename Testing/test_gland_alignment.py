"""The "gland" initial alignment: the translation between the gland centroids that a model's two
localisers predict, in physical space, through the model, the engine, file I/O and training."""
import numpy as np
import pytest
import torch
from labelreg.engine import RegistrationEngine
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.metrics import centroid_lps
from labelreg.model import ModelConfig, RegistrationModel, gland_probability, probability_centroid_lps
from labelreg.model_io import load_model, save_model
from labelreg.phantom import rotation_matrix
from labelreg.volume import Volume
from torch import nn

LOCALISER = {"base_channels": 2, "levels": 2}


class Threshold(nn.Module):
    """A stand-in localiser that "segments" what is bright: logits = 40 (image - 0.5)."""

    multiple = 1

    def forward(self, x):
        return 40.0 * (x - 0.5)


def blob(grid: Grid, centre_lps, radius_mm=12.0) -> np.ndarray:
    points = grid.points_lps(dtype=torch.float64).numpy()
    return (np.linalg.norm(points - np.asarray(centre_lps), axis=-1) < radius_mm).astype(np.float32)


FIXED = Grid((40, 30, 24), (1.1, 1.6, 2.3), (-20.0, -15.0, -25.0), tuple(rotation_matrix((0.3, -0.5, 0.8), 0.6).ravel()))
MOVING = Grid((36, 36, 30), (1.4, 1.2, 1.9), (10.0, -30.0, 5.0), tuple(rotation_matrix((-0.6, 0.2, 0.7), -0.4).ravel()))


def gland_model(seed=0):
    torch.manual_seed(seed)
    model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER))
    model.localisers = nn.ModuleDict({"fixed": Threshold(), "moving": Threshold()})
    return model.eval()


def test_gland_centroid_is_found_in_lps_on_an_oblique_anisotropic_grid():
    centre = FIXED.center_lps + [4.0, -3.0, 2.0]
    image = blob(FIXED, centre)
    model = gland_model()
    found_centroid, found = probability_centroid_lps(*gland_probability(
        Threshold(), torch.from_numpy(image)[None, None], FIXED, model.localiser_grid(FIXED, "fixed")))
    assert found.item()
    assert np.linalg.norm(found_centroid[0].numpy() - centroid_lps(image, FIXED)) < 1.0  # one 3 mm voxel, well inside


def test_engine_starts_from_the_predicted_gland_centroids():
    fixed_centre, moving_centre = FIXED.center_lps + [4.0, -3.0, 2.0], MOVING.center_lps + [-6.0, 5.0, 3.0]
    fixed = Volume(blob(FIXED, fixed_centre), FIXED, "TRUS")
    moving = Volume(blob(MOVING, moving_centre), MOVING, "MR")
    result = RegistrationEngine(gland_model(), device="cpu").register(fixed, moving, moving, mode="affine")
    expected = centroid_lps(moving.array, MOVING) - centroid_lps(fixed.array, FIXED)
    assert np.linalg.norm(result.initial_lps[:3, 3] - expected) < 1.0
    np.testing.assert_allclose(result.initial_lps[:3, :3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(result.affine_lps, result.initial_lps, atol=1e-4)  # untrained global net: identity
    warped_centre = centroid_lps(result.warped_labels[0], FIXED)
    assert np.linalg.norm(warped_centre - centroid_lps(fixed.array, FIXED)) < 1.0  # the MR gland lands on the TRUS one


def test_an_empty_prediction_falls_back_to_the_volume_centres():
    model = gland_model()
    fixed = torch.zeros(1, 1, *FIXED.shape_zyx)
    moving = torch.from_numpy(blob(MOVING, MOVING.center_lps))[None, None]
    initial = model.initial_lps(fixed, FIXED, moving, MOVING)[0].numpy()
    np.testing.assert_allclose(initial[:3, 3], MOVING.center_lps - FIXED.center_lps, atol=1e-4)


def test_gland_alignment_errors_are_clear():
    with pytest.raises(ValueError, match="needs a localiser"):
        ModelConfig(initial_alignment="gland")
    plain = RegistrationEngine(RegistrationModel().eval(), device="cpu")
    image = Volume(blob(FIXED, FIXED.center_lps), FIXED, "TRUS")
    with pytest.raises(LabelRegError, match="gland localisers"):
        plain.register(image, image, mode="affine", initial_alignment="gland")
    with pytest.raises(LabelRegError, match="initial_alignment must be"):
        plain.register(image, image, mode="affine", initial_alignment="middle")


def test_localisers_are_saved_and_loaded_with_the_model(tmp_path):
    torch.manual_seed(0)
    model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER))
    path = save_model(tmp_path / "gland.pt", model)
    loaded, _ = load_model(path)
    assert loaded.config.initial_alignment == "gland" and loaded.localisers is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert RegistrationModel().localisers is None  # plain models are unchanged


def test_before_metrics_of_a_gland_model_are_the_volume_centres(tmp_path):
    """The gland alignment is learned, so "before" (metrics, QC) is the network-free start."""
    from labelreg.batch import register_to_folder
    from labelreg.metrics import evaluate_pair
    from labelreg.transforms import initial_transform
    fixed_centre, moving_centre = FIXED.center_lps + [4.0, -3.0, 2.0], MOVING.center_lps + [-6.0, 5.0, 3.0]
    fixed = Volume(blob(FIXED, fixed_centre), FIXED, "TRUS")
    moving = Volume(blob(MOVING, moving_centre), MOVING, "MR")
    labels = Volume(moving.array[None], MOVING, "MR labels")
    fixed_labels = Volume(fixed.array[None], FIXED, "TRUS labels")
    engine = RegistrationEngine(gland_model(), device="cpu")
    outcome = register_to_folder(engine, fixed, moving, labels, tmp_path, "affine", fixed_labels=fixed_labels)
    from labelreg.batch import warp_initial
    centres = warp_initial(FIXED, labels, initial_transform(FIXED, MOVING, "centers"))
    assert outcome["metrics_before"] == evaluate_pair(centres, fixed_labels.channels, FIXED)
    assert outcome["metrics_after"]["dice"] > outcome["metrics_before"]["dice"] + 0.2


def test_localisers_see_their_images_in_the_frame_at_the_network_spacing():
    """Each localiser sees its image resampled into the model's frame at ``grid_spacing_mm``."""
    seen = []

    class Recording(Threshold):
        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            return super().forward(x)

    fixed = torch.from_numpy(blob(FIXED, FIXED.center_lps + [4.0, -3.0, 2.0]))[None, None]
    moving = torch.from_numpy(blob(MOVING, MOVING.center_lps + [-6.0, 5.0, 3.0]))[None, None]
    model = RegistrationModel(ModelConfig(grid_spacing_mm=2.5, initial_alignment="gland", localiser=LOCALISER))
    model.localisers = nn.ModuleDict({"fixed": Recording(), "moving": Recording()})
    model.initial_lps(fixed, FIXED, moving, MOVING)
    frame = model.config.frame
    assert seen == [FIXED.resampled(2.5, 1, frame).shape_zyx, MOVING.resampled(2.5, 1, frame).shape_zyx]


def test_localisers_run_once_per_registration_and_only_for_the_gland_alignment():
    """The gland alignment runs each localiser once (the maps serve the centroids and the overlap);
    the other alignments never run them, in any mode: the networks see the images only."""
    calls = []

    class Counting(Threshold):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    model = gland_model()
    model.localisers = nn.ModuleDict({"fixed": Counting(), "moving": Counting()})
    model.config.gland_translation = "overlap"
    fixed = Volume(blob(FIXED, FIXED.center_lps + [4.0, -3.0, 2.0]), FIXED, "TRUS")
    moving = Volume(blob(MOVING, MOVING.center_lps + [-6.0, 5.0, 3.0]), MOVING, "MR")
    engine = RegistrationEngine(model, device="cpu")
    for mode in ("affine", "deformable", "local"):
        calls.clear()
        engine.register(fixed, moving, mode=mode)
        assert len(calls) == 2, mode
        calls.clear()
        engine.register(fixed, moving, mode=mode, initial_alignment="centers")
        assert calls == [], mode
