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


def test_localisers_can_work_on_their_own_grid_spacing():
    """``localiser_spacing_mm`` sets the localisers' grid apart from the networks' grid: a
    model whose nets work at 2 mm still runs 3 mm localisers at 3 mm, and finds the same glands."""
    seen = []

    class Recording(Threshold):
        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            return super().forward(x)

    fixed = torch.from_numpy(blob(FIXED, FIXED.center_lps + [4.0, -3.0, 2.0]))[None, None]
    moving = torch.from_numpy(blob(MOVING, MOVING.center_lps + [-6.0, 5.0, 3.0]))[None, None]
    translations = []
    for grid_mm, localiser_mm in ((3.0, None), (2.0, 3.0)):
        model = RegistrationModel(ModelConfig(grid_spacing_mm=grid_mm, initial_alignment="gland", localiser=LOCALISER,
                                              localiser_spacing_mm=localiser_mm))
        model.localisers = nn.ModuleDict({"fixed": Recording(), "moving": Recording()})
        translations.append(model.initial_lps(fixed, FIXED, moving, MOVING)[0, :3, 3])
    frame = model.config.frame  # the localisers see each image in the model's frame
    assert seen[0:2] == seen[2:4] == [FIXED.resampled(3.0, 1, frame).shape_zyx, MOVING.resampled(3.0, 1, frame).shape_zyx]
    assert torch.equal(translations[0], translations[1])
    assert ModelConfig.from_dict({"grid_spacing_mm": 2.5}).localiser_spacing == 2.5  # old model files


def gland_input_model(calls=None):
    """A gland model whose local net also sees the localisers' gland maps (Threshold localisers
    that count their calls in ``calls``)."""

    class Counting(Threshold):
        def forward(self, x):
            if calls is not None:
                calls.append(1)
            return super().forward(x)

    torch.manual_seed(0)
    model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER, local_gland_inputs=True,
                                          local_net={"base_channels": 2, "levels": 2}))
    model.localisers = nn.ModuleDict({"fixed": Counting(), "moving": Counting()})
    return model.eval()


def test_local_net_sees_the_gland_maps_where_it_sees_the_images():
    """With ``local_gland_inputs`` the local net's channels 3 and 4 are the localisers' maps,
    sampled at the same physical points as the fixed image and the (initially aligned) moving
    image: on bright blobs whose maps equal the images, channel 3 = channel 1 and 4 = 2."""
    fixed = torch.from_numpy(blob(FIXED, FIXED.center_lps + [4.0, -3.0, 2.0]))[None, None]
    moving = torch.from_numpy(blob(MOVING, MOVING.center_lps + [-6.0, 5.0, 3.0]))[None, None]
    model = gland_input_model()
    assert model.local_net.in_channels == 4
    seen = []
    model.local_net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    initial = model.initial_lps(fixed, FIXED, moving, MOVING)
    with torch.no_grad():
        _, ddf, _, _ = model.forward_pair(fixed, FIXED, moving, MOVING, initial, "local")
    x = seen[0]
    assert x.shape[1] == 4 and ddf is not None
    inside = x[:, 0] > 0.9  # well inside the fixed blob (3 mm maps are coarser than the images)
    assert inside.any() and (x[:, 2][inside] > 0.5).float().mean() > 0.95
    both = (x[:, 1] > 0.9)
    assert both.any() and (x[:, 3][both] > 0.5).float().mean() > 0.95
    # the initially aligned blobs overlap: the moving map lands on the fixed one
    overlap = ((x[:, 2] > 0.5) & (x[:, 3] > 0.5)).sum() / (x[:, 2] > 0.5).sum()
    assert overlap > 0.8


def test_gland_maps_are_computed_once_per_registration_and_change_the_field():
    calls = []
    model = gland_input_model(calls)
    fixed = Volume(blob(FIXED, FIXED.center_lps + [4.0, -3.0, 2.0]), FIXED, "TRUS")
    moving = Volume(blob(MOVING, MOVING.center_lps + [-6.0, 5.0, 3.0]), MOVING, "MR")
    engine = RegistrationEngine(model, device="cpu")
    result = engine.register(fixed, moving, mode="local")
    assert len(calls) == 2  # one call per localiser, shared by the alignment and the local net
    calls.clear()
    engine.register(fixed, moving, mode="local", initial_alignment="centers")
    assert len(calls) == 2  # the local net still needs the maps
    calls.clear()
    engine.register(fixed, moving, mode="affine", initial_alignment="centers")
    assert calls == []  # nothing needs them
    # the maps are real inputs: other maps, another field
    f = torch.from_numpy(fixed.array)[None, None]
    m = torch.from_numpy(moving.array)[None, None]
    initial = torch.from_numpy(result.initial_lps).float()[None]
    maps = model.gland_maps(f, FIXED, m, MOVING)
    with torch.no_grad():
        _, a, _, _ = model.forward_pair(f, FIXED, m, MOVING, initial, "local", gland_maps=maps)
        _, same, _, _ = model.forward_pair(f, FIXED, m, MOVING, initial, "local")
        other = ((1 - maps[0][0], maps[0][1]), maps[1])
        _, b, _, _ = model.forward_pair(f, FIXED, m, MOVING, initial, "local", gland_maps=other)
    assert torch.equal(a, same) and not torch.allclose(a, b)


def test_gland_input_models_are_saved_loaded_and_checked(tmp_path):
    with pytest.raises(ValueError, match="local_gland_inputs needs a localiser"):
        ModelConfig(local_gland_inputs=True)
    with pytest.raises(ValueError, match="set local_gland_inputs instead"):
        ModelConfig(local_net={"base_channels": 4, "levels": 2, "in_channels": 4})
    torch.manual_seed(0)
    model = RegistrationModel(ModelConfig(initial_alignment="gland", localiser=LOCALISER, local_gland_inputs=True))
    loaded, _ = load_model(save_model(tmp_path / "inputs.pt", model))
    assert loaded.config.local_gland_inputs and loaded.local_net.in_channels == 4
    assert RegistrationModel(ModelConfig.from_dict({"initial_alignment": "centers"})).local_net.in_channels == 2
