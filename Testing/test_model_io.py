"""Model files: round trip, and one clear LabelRegError for each kind of bad file."""
import json

import pytest
import torch
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.model import FORMAT_VERSION, ModelConfig, RegistrationModel
from labelreg.model_io import load_model, save_model, sha256_of, sidecar_path

SMALL = {"base_channels": 2, "levels": 2}


def small_model(seed=0):
    torch.manual_seed(seed)
    model = RegistrationModel(ModelConfig(grid_spacing_mm=4.0, global_net=dict(SMALL), local_net=dict(SMALL)))
    with torch.no_grad():  # make every parameter matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def forward(model):
    grid = Grid((10, 9, 8), (2.0, 2.0, 2.0), (0, 0, 0))
    g = torch.Generator().manual_seed(1)
    fixed, moving = torch.rand(1, 1, 8, 9, 10, generator=g), torch.rand(1, 1, 8, 9, 10, generator=g)
    with torch.no_grad():
        affine, ddf, _, _ = model.forward_pair(fixed, grid, moving, grid, torch.eye(4)[None], "deformable")
    return affine, ddf


def rewrite_consistently(path, checkpoint, sidecar_update=None):
    """Replace the .pt and fix the sidecar's sha256 so only the content is wrong."""
    torch.save(checkpoint, path)
    meta = json.loads(sidecar_path(path).read_text())
    meta.update(sidecar_update or {})
    meta["sha256"] = sha256_of(path)
    sidecar_path(path).write_text(json.dumps(meta))


def test_round_trip(tmp_path):
    model = small_model()
    path = save_model(tmp_path / "m.pt", model, {"trained_on": "phantoms", "val_dice": 0.9})
    loaded, meta = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert meta["trained_on"] == "phantoms" and meta["format_version"] == FORMAT_VERSION
    assert meta["sha256"] == sha256_of(path) and meta["weights_file"] == "m.pt"
    for a, b in zip(forward(model), forward(loaded)):
        assert torch.equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]  # no temporary files left


def test_flipped_byte_fails_the_hash(tmp_path):
    path = save_model(tmp_path / "m.pt", small_model())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LabelRegError, match="sha256"):
        load_model(path)


def test_config_that_does_not_match_the_weights(tmp_path):
    path = save_model(tmp_path / "m.pt", small_model())
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["local_net"]["base_channels"] = 4
    rewrite_consistently(path, checkpoint, {"config": checkpoint["config"]})
    with pytest.raises(LabelRegError, match="do not match the architecture"):
        load_model(path)


def test_missing_sidecar(tmp_path):
    path = save_model(tmp_path / "m.pt", small_model())
    sidecar_path(path).unlink()
    with pytest.raises(LabelRegError, match="m.json.*missing"):
        load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(LabelRegError, match="not found"):
        load_model(tmp_path / "nothing.pt")


def test_non_torch_file_with_correct_hash(tmp_path):
    path = save_model(tmp_path / "m.pt", small_model())
    path.write_bytes(b"this is not a torch checkpoint\n" * 10)
    meta = json.loads(sidecar_path(path).read_text())
    meta["sha256"] = sha256_of(path)
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(LabelRegError, match="not a readable LabelReg model"):
        load_model(path)


@pytest.mark.parametrize("checkpoint, message", [
    ({"state_dict": {}}, "needs 'config' and 'state_dict'"),
    ([1, 2, 3], "not a LabelReg model file"),
    ({"format_version": FORMAT_VERSION + 1, "config": {}, "state_dict": {}}, "newer than this LabelReg"),
])
def test_wrong_checkpoint_content(tmp_path, checkpoint, message):
    path = save_model(tmp_path / "m.pt", small_model())
    rewrite_consistently(path, checkpoint)
    with pytest.raises(LabelRegError, match=message):
        load_model(path)


def test_unreadable_sidecar(tmp_path):
    path = save_model(tmp_path / "m.pt", small_model())
    sidecar_path(path).write_text("{not json")
    with pytest.raises(LabelRegError, match="unreadable model metadata"):
        load_model(path)


def as_format_3(path, config_update=None, net_update=None):
    """Rewrite a saved model as model format 3 wrote it: the options format 4 removed, at their
    inert values unless ``config_update`` / ``net_update`` (into every network) say otherwise."""
    checkpoint = torch.load(path, weights_only=True)
    config = checkpoint["config"] | {"local_gland_inputs": False, "localiser_spacing_mm": None} | (config_update or {})
    for net in ("global_net", "local_net"):
        config[net] = config[net] | {"norm": "instance"} | (net_update or {})
    config["global_net"] |= {"keypoints": 32, "ridge": 0.01} if "head" not in (net_update or {}) else {}
    rewrite_consistently(path, {**checkpoint, "format_version": 3, "config": config}, {"format_version": 3, "config": config})


def test_a_format_3_file_with_inert_removed_options_loads_and_registers_the_same(tmp_path):
    """The removed options at the values under which they changed nothing (as in the bundled model,
    format 3): the file loads with the same configuration and gives bit-identical outputs."""
    model = small_model()
    path = save_model(tmp_path / "m.pt", model)
    as_format_3(path, {"localiser_spacing_mm": 4.0})  # equal to the network grid's: inert too
    loaded, meta = load_model(path)
    assert meta["format_version"] == 3 < FORMAT_VERSION
    assert loaded.config == model.config
    for a, b in zip(forward(model), forward(loaded)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config_update, net_update, option", [
    ({"local_gland_inputs": True}, None, "local_gland_inputs = True"),
    ({"localiser_spacing_mm": 2.0}, None, "localiser_spacing_mm = 2.0"),
    (None, {"head": "keypoints"}, "global_net.head = 'keypoints'"),
    (None, {"dof": "translation"}, "global_net.dof = 'translation'"),
    (None, {"norm": "batch"}, "global_net.norm = 'batch'"),
])
def test_a_file_that_used_a_removed_option_is_refused_in_one_line(tmp_path, config_update, net_update, option):
    path = save_model(tmp_path / "m.pt", small_model())
    as_format_3(path, config_update, net_update)
    with pytest.raises(LabelRegError) as error:
        load_model(path)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: model option {option} was removed")
    assert "retrain with the current recipe" in message and "labelreg <= 0.1" in message


def test_the_bundled_model_loads_as_format_4():
    """The bundled file (model format 3, every removed option inert) loads without a re-export."""
    model, meta = load_model()
    assert meta["format_version"] <= FORMAT_VERSION == 4
    assert model.config.localiser is not None and model.config.gland_translation == "overlap"
    assert set(model.config.local_net) == {"base_channels", "levels"}


def test_a_configuration_spelling_out_a_removed_option_inertly_still_builds():
    """Configurations written for format <= 3 spelt out ``"norm": "instance"`` in every network:
    it is dropped; the batch norm it could select is gone, and refused by name."""
    from labelreg.model import RetiredOptionError
    config = ModelConfig(local_net={"base_channels": 4, "levels": 3, "norm": "instance"},
                         global_net={"base_channels": 4, "levels": 3, "pooled_size": [2, 2, 2], "norm": "instance",
                                     "head": "dense", "keypoints": 32})
    assert config.local_net == {"base_channels": 4, "levels": 3}
    assert config.global_net == {"base_channels": 4, "levels": 3, "pooled_size": [2, 2, 2]}
    assert RegistrationModel(config) is not None
    with pytest.raises(RetiredOptionError, match="local_net.norm = 'batch' was removed"):
        ModelConfig(local_net={"base_channels": 4, "levels": 3, "norm": "batch"})
