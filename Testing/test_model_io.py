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
    with torch.no_grad():  # make every parameter and BN statistic matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
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
