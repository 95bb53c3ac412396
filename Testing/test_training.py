"""Training: loss terms on known cases, sampling, subject split, smoke training, exact resume,
DDP with two gloo processes, export."""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from labelreg.model_io import load_model
from labelreg.phantom import make_pair, write_pair
from labelreg_training import losses
from labelreg_training.data import kfold_by_subject, load_dataset
from labelreg_training.train import TrainConfig, draw_batch, set_trainable, train

SPACING = (0.8, 1.3, 2.1)
NO_AUGMENT = {"rotation_deg": 0.0, "scale": 0.0, "translation_mm": 0.0, "deformation_mm": 0.0,
              "deformation_points": 4, "gamma": 0.0, "noise": 0.0}
SMALL_MODEL = {"grid_spacing_mm": 4.0, "initial_alignment": "centers", "intensity_percentiles": [1.0, 99.0],
               "global_net": {"base_channels": 4, "levels": 3, "pooled_size": [2, 2, 2]},
               "local_net": {"base_channels": 4, "levels": 3}}


def cube(shape=(20, 24, 28), lo=(6, 8, 10), size=6):
    x = torch.zeros(1, 1, *shape)
    x[..., lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 1
    return x


# ----------------------------------------------------------------- loss terms
def test_identical_labels_give_minimal_label_losses():
    a, shifted = cube(), cube(lo=(8, 10, 12))
    assert losses.multiscale_dice(a, a, SPACING).item() == pytest.approx(0, abs=1e-5)
    assert losses.multiscale_dice(shifted, a, SPACING).item() > 0.2


def test_gaussian_blur_is_a_gaussian_along_each_axis_with_the_edges_repeated():
    """Against a direct reference (edge padding, then a 1-D convolution per axis in mm),
    on an anisotropic grid; kernels wider than an axis included."""
    x = torch.rand(2, 3, 9, 12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma_mm in (1.0, 3.0, 12.0):
        ref = x.numpy()
        for axis, step in zip((2, 3, 4), SPACING[::-1]):
            sigma = sigma_mm / step
            r = max(1, int(np.ceil(3 * sigma)))
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
            k /= k.sum()
            pad = [(0, 0)] * 5
            pad[axis] = (r, r)
            ref = np.apply_along_axis(lambda v, k=k: np.convolve(v, k, mode="valid"), axis, np.pad(ref, pad, mode="edge"))
        np.testing.assert_allclose(losses.gaussian_blur(x, sigma_mm, SPACING).numpy(), ref, atol=1e-12)
    assert torch.equal(losses.gaussian_blur(x, 0.0, SPACING), x)
    flat = torch.full((1, 1, 6, 7, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(losses.gaussian_blur(flat, 5.0, SPACING), flat)


def _field(fn, shape=(12, 14, 16), spacing=SPACING):
    k, j, i = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    x = torch.stack([i * spacing[0], j * spacing[1], k * spacing[2]], -1)
    return fn(x)[None]


def test_bending_energy_is_zero_for_affine_and_positive_for_a_bump():
    matrix = torch.tensor([[0.1, 0.05, 0.0], [0.0, -0.08, 0.02], [0.03, 0.0, 0.12]], dtype=torch.float64)
    affine = _field(lambda x: x @ matrix.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    assert losses.bending_energy(affine, SPACING).item() == pytest.approx(0, abs=1e-12)
    centre = torch.tensor([6.0, 9.0, 12.0], dtype=torch.float64)
    bump = _field(lambda x: 2.0 * torch.exp(-((x - centre) ** 2).sum(-1, keepdim=True) / 50) * torch.ones(3))
    assert losses.bending_energy(bump, SPACING).item() > 1e-4


def test_bending_energy_uses_millimetres():
    """u = x^2 / 2 along one axis has d2u/dx2 = 1 per mm whatever the spacing."""
    for spacing in (SPACING, (1.5, 1.5, 1.5)):
        field = _field(lambda x: torch.stack([x[..., 0] ** 2 / 2, 0 * x[..., 0], 0 * x[..., 0]], -1), spacing=spacing)
        assert losses.bending_energy(field, spacing).item() == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------------------------ data and sampling
def test_kfold_split_never_shares_a_subject():
    subjects = {f"c{i:02d}": f"s{i // 2}" for i in range(20)}
    seen = []
    for fold in range(4):
        train_cases, val_cases = kfold_by_subject(subjects, 4, fold)
        assert not {subjects[c] for c in train_cases} & {subjects[c] for c in val_cases}
        assert sorted(train_cases + val_cases) == sorted(subjects)
        seen += val_cases
    assert sorted(seen) == sorted(subjects)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(4):
        write_pair(make_pair(seed, fixed_size=(24, 28, 22), moving_size=(28, 28, 26), spacing=(2.5, 2.5, 2.5),
                             n_landmarks=2), folder, f"case{seed:03d}")
    (folder / "subjects.csv").write_text("case,subject\ncase000,a\ncase001,a\ncase002,b\ncase003,c\n")
    return load_dataset(folder, tmp_path_factory.mktemp("cache"), log=lambda *_: None)


def test_gland_is_drawn_twice_as_often_as_each_landmark(dataset):
    cfg = TrainConfig(batch_size=1)
    case = [dataset.cases["case000"]]  # 3 channels: gland + 2 landmarks
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(3)
    for _ in range(1200):
        _, _, fixed_label, _ = draw_batch(case, cfg, gen, "cpu")
        assert fixed_label.shape[1] == 1
        counts[[int(torch.equal(fixed_label[0, 0], case[0].fixed_labels[c].float())) for c in range(3)].index(1)] += 1
    assert counts[0] / counts[1:].mean() == pytest.approx(2.0, rel=0.15)


def test_cache_is_reused(dataset, tmp_path):
    again = load_dataset(dataset.data_dir, tmp_path, log=lambda *_: None)
    cached = load_dataset(dataset.data_dir, tmp_path, log=lambda *_: None)
    assert again.fingerprint == cached.fingerprint
    assert torch.equal(again.cases["case001"].moving, cached.cases["case001"].moving)
    assert cached.fixed_grid == dataset.fixed_grid


def test_dataset_loads_from_its_cache_file_alone(dataset, tmp_path):
    """A cache file is self-contained (the GPU machine gets it without the data folder)."""
    from labelreg.errors import LabelRegError
    load_dataset(dataset.data_dir, tmp_path / "c", log=lambda *_: None)
    (cache_file,) = (tmp_path / "c").glob("*.pt")
    alone = load_dataset(cache_file, log=lambda *_: None)
    assert alone.subjects == dataset.subjects and alone.fingerprint == dataset.fingerprint
    assert torch.equal(alone.cases["case002"].fixed_labels, dataset.cases["case002"].fixed_labels)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a cache")
    with pytest.raises(LabelRegError, match="not a readable data cache"):
        load_dataset(bad, log=lambda *_: None)


# ------------------------------------------------------------------ training
def _config(tmp_path, **kw):
    values = {"out_dir": str(tmp_path / "run"), "stage": "global", "steps": 6, "batch_size": 2, "lr": 3e-3, "folds": 1,
              "threads": 1, "checkpoint_minutes": 0.0, "log_every": 2, "model": SMALL_MODEL, "augment": NO_AUGMENT,
              "device": "cpu"}
    values.update(kw)
    return TrainConfig(**values)


def _fixed_batch_loss(model, cfg, data, seeds=range(6)):
    """Mean loss over fixed draws (same cases, labels and generator each time)."""
    from labelreg_training.train import LossModule
    set_trainable(model, cfg.stage)
    module, cases, total = LossModule(model, cfg, data), list(data.cases.values()), 0.0
    with torch.no_grad():
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            total += module(*draw_batch(cases, cfg, gen, "cpu"), gen)[0].item()
    return total / len(seeds)


GLAND_MODEL = {**SMALL_MODEL, "initial_alignment": "gland", "localiser": {"base_channels": 2, "levels": 2}}


@pytest.mark.parametrize("stage", ["global", "local", "localiser"])
def test_smoke_training_decreases_the_loss(dataset, tmp_path, stage):
    from labelreg.model import ModelConfig, RegistrationModel
    cfg = _config(tmp_path, stage=stage, steps=60, lr=1e-3, lr_final=1e-3,
                  model=GLAND_MODEL if stage == "localiser" else SMALL_MODEL)
    before = _fixed_batch_loss(RegistrationModel(ModelConfig.from_dict(cfg.model)), cfg, dataset)
    train(cfg, dataset, log=lambda *_: None)
    trained = RegistrationModel(ModelConfig.from_dict(cfg.model))
    trained.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"])
    after = _fixed_batch_loss(trained, cfg, dataset)
    assert after < 0.97 * before


def test_time_budget_ends_the_stage_and_anneals_the_learning_rate(dataset, tmp_path):
    """A stage with a time budget ends on the clock, and its cosine follows the clock. The
    clock is simulated (each reading advances it 10 ms), so a loaded machine gives the same."""
    ticks = iter(range(10**9))
    cfg = _config(tmp_path, steps=100000, minutes=0.02, lr=1e-3, lr_final=1e-5, log_every=1)
    train(cfg, dataset, log=lambda *_: None, clock=lambda: 0.01 * next(ticks))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert 0 < state["step"] < 100000 and state["seconds"] >= 0.02 * 60
    from labelreg_training.train import learning_rate
    last = (tmp_path / "run" / "log.csv").read_text().splitlines()[-1].split(",")
    by_steps = learning_rate(cfg, int(last[0]) - 1)  # what the schedule over 100000 steps would give there
    assert float(last[5]) < 0.1 * by_steps  # the cosine followed the clock to its end


@pytest.mark.parametrize("stage", ["global", "local", "localiser", "local_only"])
def test_resume_continues_bit_for_bit(dataset, tmp_path, stage):
    augment = {**NO_AUGMENT, "rotation_deg": 5.0, "noise": 0.02}
    model = GLAND_MODEL if stage in ("localiser", "local_only") else SMALL_MODEL
    straight = _config(tmp_path / "a", stage=stage, augment=augment, model=model)
    train(straight, dataset, log=lambda *_: None)
    interrupted = _config(tmp_path / "b", stage=stage, augment=augment, model=model)
    train(interrupted, dataset, log=lambda *_: None, stop_after=3)
    train(interrupted, dataset, resume=True, log=lambda *_: None)
    a = torch.load(tmp_path / "a" / "run" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (tmp_path / "a" / "run" / "log.csv").read_text().splitlines()[1:] != []


def _ddp_worker(rank, world, port, data_dir, cache, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    data = load_dataset(data_dir, cache, log=lambda *_: None)
    cfg = TrainConfig(out_dir=out, steps=3, batch_size=1, folds=1, threads=1, model=SMALL_MODEL,
                      augment=NO_AUGMENT, device="cpu", log_every=1)
    train(cfg, data, log=lambda *_: None)
    torch.save({k: v.clone() for k, v in torch.load(f"{out}/checkpoint.pt", weights_only=True)["model"].items()},
               f"{out}/rank{rank}.pt") if rank == 0 else None
    import torch.distributed as dist
    dist.barrier()  # both ranks done before teardown (a rank leaving early aborted its peer's gloo threads)
    dist.destroy_process_group()


def test_ddp_two_gloo_processes(dataset, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(2, port, dataset.data_dir, str(tmp_path / "cache"), out), nprocs=2, join=True)
    state = torch.load(f"{out}/checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    assert any(v.abs().sum() > 0 for k, v in state["model"].items() if k.startswith("global_net.head"))


def test_export_writes_a_loadable_model_with_metadata(dataset, tmp_path):
    from labelreg_training.export import export_model
    cfg = _config(tmp_path, steps=2)
    ckpt = train(cfg, dataset, log=lambda *_: None)
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"mode": "affine", "summary": {"tre_median_mm": 5.0}}))
    path = export_model(ckpt, tmp_path / "model" / "m.pt", [metrics], dataset.data_dir, ["labelreg-train", "export"])
    model, meta = load_model(path)
    assert meta["metrics"][0]["tre_median_mm"] == 5.0 and meta["checkpoint_step"] == 2
    assert meta["config"]["global_net"]["base_channels"] == 4
    assert not model.training
    assert [s["stage"] for s in meta["stages"]] == ["global"] and meta["stages"][0]["checkpoint_step"] == 2


def test_export_records_every_stage_that_led_to_the_model(dataset, tmp_path):
    from labelreg_training.export import export_model
    first = train(_config(tmp_path / "a", steps=2), dataset, log=lambda *_: None)
    second = train(_config(tmp_path / "b", stage="local", steps=3, init_from=str(first)), dataset, log=lambda *_: None)
    _, meta = load_model(export_model(second, tmp_path / "m.pt"))
    assert [(s["stage"], s["checkpoint_step"]) for s in meta["stages"]] == [("global", 2), ("local", 3)]
    assert meta["stages"][1]["init_from"] == str(first)


def test_inference_options_change_a_checkpoint_without_its_weights(dataset, tmp_path):
    """``evaluate``/``export --gland-translation overlap``: the option reaches the model (and the
    exported file's config and metadata) with the same weights; options that change weights are refused."""
    from labelreg_training.export import export_model
    from labelreg_training.train import load_checkpoint
    path = train(_config(tmp_path, steps=1), dataset, log=lambda *_: None)
    plain, _ = load_checkpoint(path)
    overlap, _ = load_checkpoint(path, gland_translation="overlap", overlap_radius_mm=9.0)
    assert (plain.config.gland_translation, overlap.config.gland_translation) == ("centroid", "overlap")
    assert overlap.config.overlap_radius_mm == 9.0
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), overlap.state_dict().values()))
    with pytest.raises(ValueError, match="only"):
        load_checkpoint(path, grid_spacing_mm=2.0)
    model, meta = load_model(export_model(path, tmp_path / "m.pt", gland_translation="overlap"))
    assert model.config.gland_translation == "overlap" and meta["model_options"] == {"gland_translation": "overlap"}


def test_evaluate_can_measure_the_training_cases(dataset):
    """``evaluate --split training`` sees exactly the cases the fold trained on."""
    from labelreg.errors import LabelRegError
    from labelreg_training.data import split_cases, validation_cases
    _, val = validation_cases(dataset.data_dir, 3, 0)
    _, trained = validation_cases(dataset.data_dir, 3, 0, split="training")
    assert trained == split_cases(dataset.subjects, 3, 0, tune_fraction=TrainConfig().tune_fraction)[0]
    assert trained and not set(trained) & set(val)
    with pytest.raises(LabelRegError, match="split must be"):
        validation_cases(dataset.data_dir, 3, 0, split="tuning")


def test_evaluate_takes_the_cases_from_the_run_and_refuses_another_fold(dataset, tmp_path, capsys):
    """With a checkpoint, ``--split training`` measures the cases its run recorded, and a fold
    other than the run's is refused: its validation cases would be cases the run trained on."""
    from labelreg_training.cli import main as train_main
    path = train(_config(tmp_path, steps=1, folds=3, fold=1), dataset, log=lambda *_: None)
    config_path = tmp_path / "run" / "config.json"
    run = json.loads(config_path.read_text())
    common = ["evaluate", "--data", str(dataset.data_dir), "--checkpoint", str(path), "--folds", "3", "--mode",
              "affine", "--threads", "1", "--no-hd95"]

    def evaluated(*extra):
        out = tmp_path / "eval.json"
        assert train_main([*common, *extra, "--json", str(out)]) == 0
        return sorted(r["case"] for r in json.loads(out.read_text())["rows"])

    assert evaluated("--fold", "1") == sorted(run["val_cases"])
    assert evaluated("--fold", "1", "--split", "training") == sorted(run["train_cases"])
    recorded = sorted(run["tune_cases"])  # any other list the run recorded: the fold's split no longer decides
    assert recorded != sorted(run["train_cases"])
    config_path.write_text(json.dumps(run | {"train_cases": recorded}))
    assert evaluated("--fold", "1", "--split", "training") == recorded
    capsys.readouterr()
    assert train_main([*common, "--fold", "0"]) == 2
    assert "trained on fold 1 of 3" in capsys.readouterr().err


def test_evaluate_reads_a_data_cache_as_it_reads_the_folder(dataset, tmp_path):
    """``evaluate --data cache-*.pt`` (a GPU machine without NIfTI files or SimpleITK) measures
    the same cases as from the folder, with the same figures up to the cache's float16 images."""
    from labelreg_training.cli import main as train_main
    load_dataset(dataset.data_dir, tmp_path / "cache", log=lambda *_: None)
    (cache,) = (tmp_path / "cache").glob("cache-*.pt")
    results = []
    for source in (dataset.data_dir, cache):
        out = tmp_path / f"{len(results)}.json"
        assert train_main(["evaluate", "--data", str(source), "--folds", "3", "--fold", "0", "--mode", "affine",
                           "--threads", "1", "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    folder, cached = ({r["case"]: r for r in result["rows"]} for result in results)
    from labelreg_training.data import validation_cases
    assert sorted(folder) == sorted(cached) == validation_cases(dataset.data_dir, 3, 0)[1]
    for case, row in folder.items():
        assert cached[case]["dice"] == pytest.approx(row["dice"], abs=1e-3)
        assert cached[case]["tre_median_mm"] == pytest.approx(row["tre_median_mm"], abs=1e-2)


def test_evaluate_on_a_cache_without_simpleitk_skips_only_hd95(dataset, tmp_path, monkeypatch, capsys):
    """A GPU machine has no SimpleITK: evaluating a cache there says HD95 is skipped and gives the rest."""
    from labelreg import _sitk, metrics
    from labelreg_training.cli import main as train_main
    load_dataset(dataset.data_dir, tmp_path / "cache", log=lambda *_: None)
    (cache,) = (tmp_path / "cache").glob("cache-*.pt")
    monkeypatch.setattr(_sitk, "available", False)
    monkeypatch.setattr(metrics, "sitk", None)  # any SimpleITK call would fail
    out = tmp_path / "eval.json"
    assert train_main(["evaluate", "--data", str(cache), "--folds", "3", "--fold", "0", "--mode", "affine",
                       "--threads", "1", "--json", str(out)]) == 0
    assert "HD95 is skipped" in capsys.readouterr().err
    summary = json.loads(out.read_text())["summary"]
    assert summary["tre_median_mm"] > 0 and 0 < summary["dice_median"] <= 1


def test_run_seed_changes_the_weights_but_not_the_split(dataset, tmp_path):
    runs = []
    for run_seed in (0, 1):
        cfg = _config(tmp_path / str(run_seed), steps=2, folds=3, run_seed=run_seed)
        train(cfg, dataset, log=lambda *_: None)
        config = json.loads((tmp_path / str(run_seed) / "run" / "config.json").read_text())
        runs.append((config["train_cases"], config["val_cases"],
                     torch.load(tmp_path / str(run_seed) / "run" / "checkpoint.pt", weights_only=True)["model"]))
    assert runs[0][:2] == runs[1][:2]
    key = "global_net.encoder.blocks.0.conv1.weight"
    assert not torch.equal(runs[0][2][key], runs[1][2][key])


def test_tuning_split_is_taken_from_training_subjects_only():
    from labelreg_training.data import split_cases
    subjects = {f"c{i:02d}": f"s{i // 2}" for i in range(40)}
    train_cases, tune_cases, val_cases = split_cases(subjects, 5, 1, seed=0, tune_fraction=0.2)
    groups = [{subjects[c] for c in cases} for cases in (train_cases, tune_cases, val_cases)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sorted(train_cases + tune_cases + val_cases) == sorted(subjects)
    assert len(groups[1]) == round(0.2 * 16)
    assert split_cases(subjects, 5, 1, seed=0, tune_fraction=0.2) == (train_cases, tune_cases, val_cases)


def test_best_checkpoint_follows_the_tuning_score(dataset, tmp_path):
    scores = iter([(9.0, 0.5), (7.0, 0.6), (8.0, 0.6)])  # the second evaluation is the best

    def fake_evaluate(model, cases):
        assert set(cases) <= set(dataset.cases)
        tre, dice = next(scores)
        return {"tune_tre_median_mm": tre, "tune_tre_p90_mm": tre, "tune_dice_median": dice, "tune_dice_p10": dice}

    cfg = _config(tmp_path, steps=6, log_every=2, val_every=2, tune_fraction=0.3)
    train(cfg, dataset, log=lambda *_: None, evaluate_fn=fake_evaluate)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["step"] == 4 and best["score"] == pytest.approx(7.0 - 6.0)


def test_report_pools_folds_and_plots(tmp_path, capsys):
    from labelreg_training.cli import main as train_main

    def row(case, dice, tres):
        return {"case": case, "seconds": 0.1, "dice": dice, "hd95_mm": 4.0, "tre_mm": tres, "folding_fraction": 0.0}

    for fold, rows in ((0, [row("a", 0.9, [1.0, 2.0])]), (1, [row("b", 0.7, [3.0]), row("c", 0.8, [4.0, 5.0])])):
        (tmp_path / f"f{fold}.json").write_text(json.dumps({"mode": "deformable", "label": "composite", "fold": fold,
                                                             "rows": rows, "summary": {}}))
    assert train_main(["report", str(tmp_path / "f0.json"), str(tmp_path / "f1.json")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # pooled: TRE median of [1..5] = 3, p90 = 4.6; Dice median of [0.9, 0.7, 0.8] = 0.8
    assert line.startswith("| composite | 0,1 | 3 | 3.00 | 4.60 | 0.800 |")
    assert train_main(["report", str(tmp_path / "f0.json"), str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    log = tmp_path / "log.csv"
    log.write_text("step,loss,dice_loss,ce,bending,lr,seconds,tune_tre_median_mm,tune_tre_p90_mm,tune_dice_median,"
                   "tune_dice_p10\n10,1.0,0.5,0,0,0.001,1,,,,\n20,0.8,0.4,0,0,0.001,2,6.0,9.0,0.7,0.6\n")
    assert train_main(["plot", str(log)]) == 0
    assert (tmp_path / "log.png").stat().st_size > 1000


def test_compare_pairs_cases_across_folds(tmp_path, capsys):
    """The candidate is paired with the baseline case by case, whatever the file order; its mean
    change, win counts and sign test are those of the per-pair differences."""
    from labelreg_training.cli import main as train_main
    from labelreg_training.compare import compare, sign_test_p

    def write(name, label, fold, rows):
        rows = [{"case": c, "seconds": 0.1, "dice": d, "hd95_mm": 4.0, "tre_mm": t} for c, d, t in rows]
        (tmp_path / name).write_text(json.dumps({"mode": "local", "label": label, "fold": fold, "rows": rows}))
        return str(tmp_path / name)

    base = [write("a0.json", "base", 0, [("p1", 0.80, [4.0, 6.0]), ("p2", 0.70, [3.0])]),
            write("a1.json", "base", 1, [("p3", 0.90, [2.0, 2.0]), ("p4", 0.60, [8.0])])]
    # candidate files in the other fold order; per-pair TRE change -1, -2, +1, -4; Dice +.1, 0, -.1, +.2
    cand = [write("b1.json", "new", 1, [("p4", 0.80, [4.0]), ("p3", 0.80, [3.0, 3.0])]),
            write("b0.json", "new", 0, [("p2", 0.70, [1.0]), ("p1", 0.90, [3.0, 5.0])])]
    (r,) = compare(base + cand)
    assert r["pairs"] == 4 and r["tre_mean_change_mm"] == pytest.approx(-1.5)
    assert (r["tre_better"], r["tre_worse"]) == (3, 1) and r["tre_sign_p"] == pytest.approx(0.625)
    assert r["tre_ci_mm"][0] <= -1.5 <= r["tre_ci_mm"][1]
    assert r["dice_mean_change"] == pytest.approx(0.05) and (r["dice_better"], r["dice_worse"]) == (2, 1)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024) and sign_test_p(0, 0) == 1.0
    assert train_main(["compare", *base, *cand]) == 0
    assert "| new | 4 | -1.50 [" in capsys.readouterr().out
    # a subgroup: p1 and p4 (-1, -4), or all but them (-2, +1)
    assert train_main(["compare", *base, *cand, "--cases", "p1,p4"]) == 0
    assert "| new | 2 | -2.50 [" in capsys.readouterr().out
    assert train_main(["compare", *base, *cand, "--exclude", "p1,p4"]) == 0
    assert "| new | 2 | -0.50 [" in capsys.readouterr().out
    # a lone method, and a case counted twice in one method, are clear errors
    assert train_main(["compare", *base]) == 2
    assert "at least two methods" in capsys.readouterr().err
    assert train_main(["compare", *base, *cand, write("b2.json", "new", 2, [("p1", 0.9, [1.0, 1.0])])]) == 2
    assert "p1 appears twice" in capsys.readouterr().err


def test_training_starts_from_the_frozen_gland_localisers(dataset, tmp_path):
    """A model with gland localisers trains its global net from their translation; the
    localisers (trained on their own) do not move."""
    from labelreg.model import ModelConfig, RegistrationModel
    model_cfg = GLAND_MODEL
    train(_config(tmp_path, model=model_cfg, steps=3), dataset, log=lambda *_: None)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # what train() seeds before building the model (seed 0, run seed 0)
    initial = RegistrationModel(ModelConfig.from_dict(model_cfg)).state_dict()
    localiser_keys = [k for k in initial if k.startswith("localisers.")]
    assert localiser_keys and all(torch.equal(initial[k], trained[k]) for k in localiser_keys)
    assert not torch.equal(initial["global_net.head.bias"], trained["global_net.head.bias"])


def test_local_only_stage_trains_the_local_net_on_the_frozen_localisers(dataset, tmp_path):
    """The recipe's second stage: the local net, from a localiser-stage checkpoint, on the frozen
    localisers' gland alignment; the loss falls and only the local net moves. A checkpoint of
    another architecture is refused, naming the mismatch."""
    from labelreg.model import ModelConfig, RegistrationModel
    from labelreg_training.train import load_init
    train(_config(tmp_path / "loc", stage="localiser", model=GLAND_MODEL, steps=2), dataset, log=lambda *_: None)
    localisers = tmp_path / "loc" / "run" / "checkpoint.pt"
    cfg = _config(tmp_path, stage="local_only", steps=60, lr=3e-3, lr_final=3e-3, model=GLAND_MODEL,
                  init_from=str(localisers))
    initial = RegistrationModel(ModelConfig.from_dict(GLAND_MODEL))
    load_init(initial, torch.load(localisers, weights_only=True)["model"])
    before = _fixed_batch_loss(initial, cfg, dataset)
    train(cfg, dataset, log=lambda *_: None)
    trained = RegistrationModel(ModelConfig.from_dict(GLAND_MODEL))
    trained.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"])
    assert _fixed_batch_loss(trained, cfg, dataset) < 0.97 * before
    moved = {k for k, v in initial.state_dict().items() if not torch.equal(v, trained.state_dict()[k])}
    assert moved and all(k.startswith("local_net.") for k in moved)
    other = RegistrationModel(ModelConfig.from_dict({**GLAND_MODEL, "localiser": {"base_channels": 3, "levels": 2}}))
    with pytest.raises(ValueError, match="localisers.fixed.*in the checkpoint but.*same architecture"):
        load_init(other, torch.load(localisers, weights_only=True)["model"])


def test_localiser_stage_trains_only_the_localisers_on_the_gland(dataset, tmp_path):
    from labelreg.model import ModelConfig, RegistrationModel
    train(_config(tmp_path, stage="localiser", model=GLAND_MODEL, steps=3), dataset, log=lambda *_: None)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    initial = RegistrationModel(ModelConfig.from_dict(GLAND_MODEL)).state_dict()
    moved = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert moved and all(k.startswith("localisers.") for k in moved)
    assert any(k.startswith("localisers.moving.") for k in moved) and any(k.startswith("localisers.fixed.") for k in moved)
    cfg = _config(tmp_path, stage="localiser")
    for seed in range(5):
        batch = draw_batch(list(dataset.cases.values()), cfg, torch.Generator().manual_seed(seed), "cpu")
        glands = [c.fixed_labels[:1].float() for c in dataset.cases.values()]
        assert all(any(torch.equal(label, g) for g in glands) for label in batch[2])
    # the localiser stage consumes the generator as the one-label draw does (its runs stay reproducible)
    streams = []
    for stage in ("localiser", "local"):
        gen = torch.Generator().manual_seed(7)
        draw_batch(list(dataset.cases.values()), _config(tmp_path, stage=stage), gen, "cpu")
        streams.append(torch.rand(4, generator=gen))
    assert torch.equal(*streams)
    with pytest.raises(ValueError, match="needs a model with gland localisers"):
        train(_config(tmp_path / "plain", stage="localiser"), dataset, log=lambda *_: None)


def test_gland_translation_is_the_one_the_localisers_see_on_the_augmented_pair(dataset, tmp_path):
    """In training the networks see the fixed image at r_fixed x and the moving one at
    r_moving y: the gland translation must bring the glands together in that view (as at
    inference), and fall back to the volume centres where a localiser finds nothing."""
    from labelreg.model import ModelConfig, RegistrationModel
    from labelreg.transforms import initial_transform, transform_points
    from labelreg_training.augment import AugmentConfig, random_affine
    model = RegistrationModel(ModelConfig.from_dict(GLAND_MODEL))
    fixed_grid, moving_grid = dataset.fixed_grid, dataset.moving_grid
    gen = torch.Generator().manual_seed(3)
    wild = AugmentConfig(rotation_deg=25.0, scale=0.2, translation_mm=10.0)
    r_fixed = random_affine(2, fixed_grid.center_lps, wild, gen)
    r_moving = random_affine(2, moving_grid.center_lps, wild, gen)
    fixed_c = torch.tensor([[10.0, -4.0, 7.0], [1.0, 2.0, 3.0]])
    moving_c = torch.tensor([[-3.0, 12.0, 5.0], [0.0, 0.0, 0.0]])
    found = torch.tensor([True, False])
    model.gland_centroids_lps = lambda *_: (fixed_c, moving_c, found)
    images = torch.zeros(2, 1, 1, 1, 1)
    base = model.initial_lps(images, fixed_grid, images, moving_grid, views_lps=(r_fixed, r_moving))
    initial = r_moving @ base
    seen_fixed_c = transform_points(torch.linalg.inv(r_fixed[:1]), fixed_c[:1, None, None, None])
    assert torch.allclose(transform_points(initial[:1], seen_fixed_c)[0, 0, 0, 0], moving_c[0], atol=1e-3)
    centres = torch.as_tensor(initial_transform(fixed_grid, moving_grid, "centers"), dtype=torch.float32)
    assert torch.allclose(initial[1], r_moving[1] @ centres)
    assert torch.equal(initial[0, :3, :3], r_moving[0, :3, :3])  # a translation only, before r_moving


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "LabelRegTraining" / "configs").glob("*.json")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_builds_its_model(path):
    """The bundled recipe's configs are valid training configs, and their model builds."""
    from labelreg.model import ModelConfig, RegistrationModel
    cfg = TrainConfig(**json.loads(path.read_text()))
    assert RegistrationModel(ModelConfig.from_dict(cfg.model)) is not None


def test_a_misspelt_model_or_augment_key_is_refused():
    """A typo in a config's model (which ModelConfig.from_dict would drop) or augment section is
    an error that names it, before any data is loaded."""
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['grid_spacing'\].*grid_spacing_mm"):
        TrainConfig(model={"grid_spacing": 2.0})
    with pytest.raises(ValueError, match=r"unknown augment setting\(s\) \['rotation'\].*rotation_deg"):
        TrainConfig(augment={"rotation": 5.0})
    with pytest.raises(ValueError, match="needs a localiser"):  # values too, with the model's own message
        TrainConfig(model={"initial_alignment": "gland"})
    assert TrainConfig(model={"grid_spacing_mm": 2.0}).model == {"grid_spacing_mm": 2.0}  # partial sections stay


def test_removed_training_options_load_inert_and_are_refused_when_used(tmp_path, capsys):
    """Options only rejected research experiments used are gone: a config (or an earlier run's
    config.json) that holds them at the value that changed nothing still loads; one that used them
    is refused in one line naming the option, by the API and by ``labelreg-train fit``."""
    from labelreg_training.cli import main as train_main
    inert = {"ce_weight": 0.0, "dice_weight": 1.0, "smoothing_mm": 2.0, "label_draw": "one", "ema_decay": 0.0,
             "dice_scales_mm": [0, 1.5, 3, 6, 12], "train_fraction": 1.0,
             "augment": {**NO_AUGMENT, "mirror": 0.0, "mirror_axis_lps": 2, "fov_cut": 0.0, "residual_scale": 0.0},
             "model": {**SMALL_MODEL, "local_gland_inputs": False, "localiser_spacing_mm": None,
                       "local_net": {"base_channels": 4, "levels": 3, "norm": "instance"}}}
    cfg = TrainConfig.from_dict(inert)
    assert cfg.augment == NO_AUGMENT and cfg.model == {**SMALL_MODEL, "local_net": {"base_channels": 4, "levels": 3}}
    for used, name in (({"ema_decay": 0.9}, "ema_decay"), ({"label_draw": "all"}, "label_draw"),
                       ({"augment": {"mirror": 0.5}}, "augment.mirror"),
                       ({"model": {"local_gland_inputs": True}}, "local_gland_inputs")):
        with pytest.raises(ValueError, match=f"option {name} = .* was removed"):
            TrainConfig.from_dict(used)
    config = tmp_path / "research.json"
    config.write_text(json.dumps({"augment": {"residual_translation_mm": 8.0}}))
    assert train_main(["fit", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "research.json" in err and "augment.residual_translation_mm = 8.0" in err



def test_a_run_with_weight_averaging_is_not_resumed_without_it(dataset, tmp_path):
    """A checkpoint of an earlier version's run with ``ema_decay`` holds averaged weights this
    version cannot continue: resuming it is refused rather than continued differently."""
    cfg = _config(tmp_path, steps=2)
    path = train(cfg, dataset, log=lambda *_: None, stop_after=1)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "ema": state["model"]}, path)
    with pytest.raises(ValueError, match="weight averaging .ema_decay., which was removed"):
        train(cfg, dataset, resume=True, log=lambda *_: None)


def test_training_enters_the_inference_forward_on_the_network_grid():
    """``forward_pair`` is ``forward_on_grid`` with the fixed image sampled on the network grid,
    which is where training enters with its augmented sampling: one forward code for both."""
    from labelreg.grid import Grid
    from labelreg.model import ModelConfig, RegistrationModel
    from labelreg.warp import sample
    grid = Grid((12, 11, 10), SPACING, (3.0, -2.0, 5.0), direction=tuple(np.linalg.qr(
        np.random.default_rng(0).normal(size=(3, 3)))[0].T.ravel()))
    model = RegistrationModel(ModelConfig.from_dict(SMALL_MODEL)).eval()
    torch.nn.init.normal_(model.global_net.head.weight, std=1e-3)  # a non-identity affine
    g = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(2, 1, 10, 11, 12, generator=g), torch.rand(2, 1, 10, 11, 12, generator=g)
    initial = torch.eye(4).repeat(2, 1, 1)
    net_grid = model.network_grid(grid)
    with torch.no_grad():
        for mode in ("affine", "deformable", "local"):
            a = model.forward_pair(fixed, grid, moving, grid, initial, mode)
            b = model.forward_on_grid(sample(fixed, grid, net_grid.points_lps()), net_grid, moving, grid, initial, mode)
            assert torch.equal(a[0], b[0]) and (a[1] is None) == (mode == "affine") == (b[1] is None)
            assert a[1] is None or torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="mode must be one of"):
        model.forward_pair(fixed, grid, moving, grid, initial, "joint")
