"""``labelreg-train`` (also ``labelreg train``): fit, evaluate, export, baseline, report, compare, plot.

Examples::

    labelreg-train fit --data ../shared/data/mrus --config LabelRegTraining/configs/gland_alignment.json \\
        --out runs/fold0/localiser --stage localiser --steps 1500 --lr 1e-3
    labelreg-train fit --data ../shared/data/mrus --config LabelRegTraining/configs/gland_overlap.json \\
        --out runs/fold0/local_only --stage local_only --steps 600 --lr 1e-3 --init-from runs/fold0/localiser/best.pt
    labelreg-train evaluate --data ../shared/data/mrus --checkpoint runs/fold0/local_only/best.pt --mode local
    labelreg-train export --checkpoint runs/fold0/local_only/best.pt --metrics runs/fold0/local_only/eval.json

(the bundled recipe, one fold: LabelRegTraining/scripts/train_gland_fold.sh)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from labelreg.choices import GLAND_TRANSLATIONS, MODES
from labelreg.errors import LabelRegError


def _add_fit(sub):
    from .train import TrainConfig
    p = sub.add_parser("fit", help="train one stage (resumable)")
    p.add_argument("--data", help="data folder (public layout); default $LABELREG_DATA")
    p.add_argument("--cache-dir", default="cache", help="where preprocessed tensors are cached")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--config", help="JSON file with TrainConfig fields (command-line flags win)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, (dict, tuple)):
            continue
        flag = "--" + ("out" if f.name == "out_dir" else f.name.replace("_", "-"))
        p.add_argument(flag, dest=f.name, type=type(value), default=None, help=f"default {value!r}")


def _fit(args) -> int:
    from .data import load_dataset
    from .evaluate import validation_callback
    from .train import STAGES, train

    cfg = _fit_config(args)
    data = load_dataset(args.data, args.cache_dir, cfg.model.get("intensity_percentiles", (1.0, 99.0)))
    evaluate_fn = validation_callback(data, STAGES[cfg.stage])
    path = train(cfg, data, resume=args.resume, evaluate_fn=evaluate_fn)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # torchrun: train() left the ranks in step
        dist.destroy_process_group()
    print(f"checkpoint: {path}")
    return 0


def _fit_config(args):
    """The stage's TrainConfig: ``--config`` (or, resuming without it, the run's config.json), then
    the command-line flags; a config that uses a removed option is refused in one line."""
    from .train import TrainConfig, retire_options

    source = Path(args.config) if args.config else None
    if args.resume and not args.config:
        saved = Path(args.out_dir or TrainConfig.out_dir) / "config.json"
        source = saved if saved.exists() else None
    try:
        values = retire_options(json.loads(source.read_text())) if source else {}
        if source is not None and not args.config:  # a run's config.json also records its cases
            values = {k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__}
        values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                       if getattr(args, f.name, None) is not None})
        return TrainConfig(**values)
    except (TypeError, ValueError) as exc:
        raise LabelRegError(f"{source or 'fit'}: {exc}") from None


def _evaluate(args) -> int:
    import torch
    from labelreg.metrics import format_metrics
    from labelreg.model import RegistrationModel

    from .data import fold_cases, load_dataset, validation_cases
    from .evaluate import cached_pairs, evaluate_model, load_pairs
    from .train import load_checkpoint

    hd95 = not args.no_hd95
    run = _run_config(args)
    cached = bool(args.data) and Path(args.data).is_file()
    if cached:  # a data cache: no NIfTI files or SimpleITK needed
        from labelreg import _sitk
        if hd95 and not _sitk.available:
            print("evaluate: SimpleITK is not installed, so HD95 is skipped (nan); the other metrics need only torch",
                  file=sys.stderr)
            hd95 = False
        data = load_dataset(args.data)
        names = fold_cases(data.subjects, args.folds, args.fold, args.seed, args.split)
    else:
        data_dir, names = validation_cases(args.data, args.folds, args.fold, args.seed, args.split)
    if args.split == "training" and run.get("train_cases"):
        names = run["train_cases"]  # exactly what the run trained on (a --train-fraction share included)
    pairs = cached_pairs(data, names) if cached else load_pairs(data_dir, names)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, **_inference_options(args))
    else:
        model = RegistrationModel()  # untrained: the initial alignment only
    torch.set_num_threads(args.threads)
    rows, summary = evaluate_model(model, pairs, args.mode, args.device, hd95=hd95)
    for r in rows:
        print(f"{r['case']}: {format_metrics(r)}")
    print(f"{args.mode} on {len(rows)} cases: {format_metrics(summary)}, {summary['seconds_per_pair']:.3f} s/pair")
    if args.json:
        out = {"mode": args.mode, "label": args.label, "fold": args.fold, "folds": args.folds, "split": args.split,
               "checkpoint": args.checkpoint,
               "summary": summary, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


def _inference_options(args) -> dict:
    """The model options given on the command line (``--gland-translation``)."""
    return {"gland_translation": args.gland_translation} if getattr(args, "gland_translation", None) else {}


def _add_inference_options(p):
    p.add_argument("--gland-translation", choices=GLAND_TRANSLATIONS,
                   help="how the gland alignment matches the two predicted glands (default: the checkpoint's): "
                        "centroid to centroid, or the best overlap of the two gland maps")


def _run_config(args) -> dict:
    """The ``config.json`` of the run that wrote ``--checkpoint`` ({} if none). A run trained on one
    fold must be evaluated on that fold: another fold's validation cases are its training cases."""
    if not args.checkpoint:
        return {}
    path = Path(args.checkpoint).parent / "config.json"
    if not path.is_file():
        return {}
    run = json.loads(path.read_text())
    trained_for = (run.get("folds"), run.get("fold"), run.get("seed"))
    if (run.get("folds") or 0) > 1 and trained_for != (args.folds, args.fold, args.seed):
        raise LabelRegError(f"{args.checkpoint} was trained on fold {run['fold']} of {run['folds']} (split seed "
                            f"{run['seed']}), so fold {args.fold} of {args.folds} (seed {args.seed}) holds cases it "
                            f"trained on: pass --folds {run['folds']} --fold {run['fold']} --seed {run['seed']}")
    return run


def _export(args) -> int:
    from .export import export_model
    path = export_model(args.checkpoint, args.out, [Path(m) for m in args.metrics], args.data, sys.argv,
                        **_inference_options(args))
    print(f"exported {path}")
    return 0


def _plot(args) -> int:
    from .plots import plot_log
    print(f"wrote {plot_log(args.log, args.out)}")
    return 0


def _report(args) -> int:
    """A markdown table of evaluation JSON files. Files with the same label (e.g. one per fold)
    are pooled: the summary is recomputed from all their per-pair rows."""
    from labelreg.metrics import summarize

    from .compare import load_groups

    groups = load_groups(args.files)
    print("| method | folds | pairs | TRE median (mm) | TRE p90 (mm) | Dice median | Dice p10 | HD95 median (mm) "
          "| folding | s/pair (batched) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, blobs in groups.items():
        rows = [r for b in blobs for r in b["rows"]]
        s = summarize(rows)
        seconds = sum(r["seconds"] for r in rows) / max(1, len(rows))
        folds = ",".join(str(b.get("fold")) for b in blobs)
        folding = s.get("folding_fraction_mean")
        print(f"| {label} | {folds} | {s['pairs']} | {s['tre_median_mm']:.2f} | {s['tre_p90_mm']:.2f} | "
              f"{s['dice_median']:.3f} | {s['dice_p10']:.3f} | {s['hd95_median_mm']:.2f} | "
              f"{'-' if folding is None else f'{folding:.4%}'} | {seconds:.2f} |")
    return 0


def _compare(args) -> int:
    """Paired changes of each method against the first one, on the pairs both evaluated."""
    from .compare import compare, format_table
    def names(text):
        return set(filter(None, (text or "").split(",")))
    print(format_table(compare(args.files, names(args.cases) if args.cases else None, names(args.exclude))))
    return 0


def _calibrate(args) -> int:
    from . import calibrate

    if args.rows and Path(args.rows).exists():
        rows = calibrate.read_rows(args.rows)
    else:
        models = dict(spec.split("=", 1) for spec in args.model)
        rows = calibrate.collect(args.data, models)
        if args.rows:
            calibrate.write_rows(args.rows, rows)
    calibration, text = calibrate.calibrate(rows)
    print(text)
    if args.write:
        calibrate.store(args.write, calibration, text)
        print(f"calibration written into {args.write}'s metadata")
    return 0


def _baseline(args) -> int:
    from .baseline import run_baseline
    return run_baseline(args)


def build_parser() -> argparse.ArgumentParser:
    from .data import TUNE_FRACTION
    parser = argparse.ArgumentParser(prog="labelreg-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit(sub)
    for name, help_text in (("evaluate", "evaluate a checkpoint on a validation fold"),
                            ("baseline", "classical SimpleITK or elastix baseline on a validation fold")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--data", help="data folder (public layout); evaluate also takes a data cache file (cache-*.pt)")
        p.add_argument("--checkpoint", help="training checkpoint (evaluate); none = initial alignment only")
        p.add_argument("--mode", default="deformable", choices=MODES)
        p.add_argument("--folds", type=int, default=5)
        p.add_argument("--fold", type=int, default=0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--split", default="validation", choices=["validation", "training"],
                       help="evaluate: the fold's validation cases, or the cases it trained on to measure the "
                            "overfit (those the checkpoint's run recorded in its config.json; else the fold's, the "
                            f"default tuning share, {TUNE_FRACTION}, excluded)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--json", help="write rows and summary here")
        p.add_argument("--no-hd95", action="store_true", help="evaluate: skip the gland HD95 (needs SimpleITK)")
        p.add_argument("--label", help="name of this row in 'labelreg-train report'")
        p.add_argument("--limit", type=int, default=0, help="baseline: only the first N cases")
        p.add_argument("--linear", default="rigid", choices=["rigid", "affine"], help="baseline: linear stage")
        p.add_argument("--method", default="simpleitk", choices=["simpleitk", "elastix"],
                       help="baseline: SimpleITK or elastix (pip install itk-elastix)")
        if name == "evaluate":
            _add_inference_options(p)
    p = sub.add_parser("export", help="write the model and metadata as the bundled model of the labelreg package")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--metrics", nargs="*", default=[], help="evaluation JSON files to record")
    p.add_argument("--data", help="data folder, recorded with its fingerprint")
    p.add_argument("--out", default=None, help="default: the bundled model path")
    _add_inference_options(p)
    p = sub.add_parser("report", help="markdown table of evaluation JSON files")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("compare", help="paired changes of methods against the first, per pair (sign test, bootstrap CI)")
    p.add_argument("files", nargs="+", help="evaluation JSON files; files with the same label are one method, "
                   "the first label is the baseline")
    p.add_argument("--cases", help="only these cases, comma-separated (a subgroup, e.g. the cut glands)")
    p.add_argument("--exclude", help="all cases but these, comma-separated")
    p = sub.add_parser("calibrate", help="fit the confidence of registrations on cross-validation")
    p.add_argument("--data", help="data folder (public layout)")
    p.add_argument("--model", action="append", default=[], metavar="FOLD=MODEL",
                   help="each fold's exported model (scores that fold's validation pairs); repeat per fold")
    p.add_argument("--rows", help="CSV of the collected features and errors: written, or read when it exists")
    p.add_argument("--write", help="store the calibration in this model's metadata (e.g. the bundled model)")
    p = sub.add_parser("plot", help="loss and metric curves of a run as PNG")
    p.add_argument("log", help="a run's log.csv")
    p.add_argument("--out", help="PNG path (default beside the log)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"fit": _fit, "evaluate": _evaluate, "export": _export, "plot": _plot, "baseline": _baseline,
                "report": _report, "compare": _compare, "calibrate": _calibrate}[args.command](args)
    except LabelRegError as exc:
        print(f"labelreg-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labelreg-train: interrupted (the last checkpoint is kept; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

