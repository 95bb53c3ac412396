"""``labelreg`` command line: register, batch, evaluate, demo, train.

Every bad input ends as one line ``labelreg: error: ...`` on stderr and a non-zero exit code
(1 for bad inputs or failed pairs, 2 for bad command-line usage); ``--debug`` shows the full
traceback of unexpected errors instead.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__, resources
from .choices import ALIGNMENTS, DEVICES, USER_MODES, VERDICT_ADVICE
from .errors import LabelRegError, RegistrationCancelled

UNTRAINED_NOTICE = "no trained model bundled yet: using the initial alignment only"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _one_line(message) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _fail(message) -> None:
    print(f"labelreg: error: {_one_line(message)}", file=sys.stderr)


# ------------------------------------------------------------------ helpers
def _engine(model, device: str, threads):
    """Engine for a model path, the bundled model (None) or a RegistrationModel."""
    from .engine import RegistrationEngine

    if model is None and not resources.BUNDLED_MODEL_FILE.exists():
        raise LabelRegError(f"{resources.BUNDLED_MODEL_FILE}: no trained model is bundled yet; pass --model FILE.pt "
                            "(or try 'labelreg demo', which runs without one)")
    if threads is not None and threads < 1:
        raise LabelRegError(f"--threads must be at least 1, got {threads}")
    return RegistrationEngine(model, device=device, threads=threads)


def _print_timings(timings: dict, extra: dict) -> None:
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
    others = ", ".join(f"{k} {v:.2f} s" for k, v in extra.items())
    print(f"timings: {stages} (registration {sum(timings.values()):.3f} s); {others}")


def _print_outcome(outcome: dict, mode: str) -> None:
    for key, path in outcome["paths"].items():
        print(f"  {key:14s} {path}")
    result = outcome["result"]
    if result.verdict is not None:
        print(f"confidence: {result.confidence:.2f} ({VERDICT_ADVICE[result.verdict]})")
    if outcome["metrics_before"] is not None:
        from .metrics import format_metrics
        print(f"before (initial alignment, no network): {format_metrics(outcome['metrics_before'])}")
        print(f"after ({mode}): {format_metrics(outcome['metrics_after'])}")


# ----------------------------------------------------------------- commands
def cmd_register(args) -> int:
    from . import io as lio
    from .batch import register_to_folder
    from .outputs import prepare_output_dir

    if args.fixed_labels and not args.moving_labels:
        raise LabelRegError("--fixed-labels (for metrics) needs --moving-labels too")
    start = time.perf_counter()
    fixed = lio.read_image(args.fixed, "fixed image")
    moving = lio.read_image(args.moving, "moving image")
    labels = lio.read_labels(args.moving_labels, moving.grid, "moving labels") if args.moving_labels else None
    fixed_labels = lio.read_labels(args.fixed_labels, fixed.grid, "fixed labels") if args.fixed_labels else None
    read_s = time.perf_counter() - start
    prepare_output_dir(args.output_dir, args.overwrite)
    engine = _engine(args.model, args.device, args.threads)
    outcome = register_to_folder(engine, fixed, moving, labels, args.output_dir, args.mode,
                                 args.initial_alignment, fixed_labels)
    result = outcome["result"]
    for line in result.warnings:
        print(f"labelreg: warning: {line}", file=sys.stderr)
    print(f"registered {args.moving} -> {args.fixed} ({args.mode}, {result.device}); outputs:")
    _print_outcome(outcome, args.mode)
    _print_timings(result.timings, {"reading": read_s, "writing": outcome["write_s"],
                                    "total": time.perf_counter() - start})
    return 0


def cmd_batch(args) -> int:
    from .batch import run_batch

    engine = _engine(args.model, args.device, args.threads)
    return run_batch(engine, args.data_dir, args.out_dir, args.mode, args.initial_alignment, args.save_ddf,
                     args.overwrite)


def cmd_evaluate(args) -> int:
    from .batch import run_evaluate

    return run_evaluate(args.warped_labels, args.fixed_labels, args.ddf, args.csv)


def _demo_inputs(data, out_dir: Path):
    """(fixed, moving, moving labels, fixed labels, description) for the demo."""
    from .layout import FOLDERS, data_pairs

    sample = resources.SAMPLE_PAIR_DIR
    folder = Path(data) if data else (sample if (sample / "fixed_images").is_dir() else None)
    if folder is not None:
        pair = data_pairs(folder, need=FOLDERS)[0]
        return (*pair.read(), f"pair {pair.name} of {folder}")
    from .phantom import make_pair, write_pair

    pair = make_pair(seed=0)
    write_pair(pair, out_dir / "inputs", "phantom000")
    return (pair.fixed, pair.moving, pair.moving_labels, pair.fixed_labels,
            f"a synthetic phantom pair (inputs written to {out_dir / 'inputs'})")


def cmd_demo(args) -> int:
    import torch

    from .batch import register_to_folder
    from .model import RegistrationModel
    from .outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.output_dir, overwrite=True)  # a rerun replaces the demo's own outputs
    fixed, moving, labels, fixed_labels, description = _demo_inputs(args.data, out_dir)
    print(f"labelreg demo on {description}")
    if args.model or resources.BUNDLED_MODEL_FILE.exists():
        engine = _engine(args.model, args.device, args.threads)
        print(f"model: {args.model or resources.BUNDLED_MODEL_FILE}")
    else:
        print(f"notice: {UNTRAINED_NOTICE}")
        torch.manual_seed(0)
        engine = _engine(RegistrationModel(), args.device, args.threads)
    outcome = register_to_folder(engine, fixed, moving, labels, out_dir, "deformable", None, fixed_labels)
    _print_outcome(outcome, "deformable")
    _print_timings(outcome["result"].timings, {"writing": outcome["write_s"]})
    print(f"outputs in {out_dir}; look at {out_dir / 'qc.png'} (yellow: warped MR gland, red: MR landmarks, "
          "cyan/green: TRUS gland/landmarks)")
    return 0


def run_train(argv) -> int:
    try:
        from labelreg_training.cli import main as train_main
    except ImportError as exc:
        raise LabelRegError(f"the training tools are not installed ({exc}); install with pip install .[train]") from None
    try:
        return int(train_main(list(argv)) or 0)
    except SystemExit as exc:  # argparse --help / usage errors of the training command line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


# ------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of unexpected errors")
    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument("--model", help="model file (.pt with its .json sidecar); default: the bundled model")
    engine.add_argument("--device", choices=DEVICES, default="auto")
    engine.add_argument("--threads", type=int, help="CPU threads for torch")
    engine.add_argument("--mode", choices=USER_MODES, default="deformable")
    engine.add_argument("--initial-alignment", choices=ALIGNMENTS,
                        help="before the networks: align volume centres, trust headers, or the predicted glands (models with gland localisers: centroids or best overlap, as the model says); default: the model's")

    parser = _Parser(prog="labelreg", description="Label-driven MR (moving) to TRUS (fixed) prostate registration.")
    parser.add_argument("--version", action="version", version=f"labelreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("register", parents=[common, engine], help="register one MR/TRUS pair")
    p.add_argument("--fixed", required=True, help="fixed (TRUS) image")
    p.add_argument("--moving", required=True, help="moving (MR) image")
    p.add_argument("--moving-labels", help="moving labels (3-D label map or 4-D channels) to warp")
    p.add_argument("--fixed-labels", help="fixed labels: print metrics before and after registration")
    p.add_argument("--output-dir", required=True, help="folder for the outputs (created if needed; must be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in --output-dir")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("batch", parents=[common, engine], help="register every pair of a data folder")
    p.add_argument("data_dir", help="folder with fixed_images/, moving_images/ [, moving_labels/, fixed_labels/]")
    p.add_argument("out_dir", help="output folder (warped_labels/, ddf/, metrics.csv)")
    p.add_argument("--save-ddf", action="store_true", help="also write the displacement fields to OUT_DIR/ddf/")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in OUT_DIR")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("evaluate", parents=[common], help="metrics of warped labels against fixed labels")
    p.add_argument("--warped-labels", required=True, help="folder (or batch output folder, or file) of warped labels")
    p.add_argument("--fixed-labels", required=True, help="folder (or data folder, or file) of fixed labels")
    p.add_argument("--ddf", help="folder of displacement fields (for the folding fraction)")
    p.add_argument("--csv", help="write the metrics to this CSV file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", parents=[common], help="a few-second end-to-end example, no data needed")
    p.add_argument("--output-dir", default="labelreg-demo-output",
                   help="output folder; a rerun replaces the demo's earlier outputs there")
    p.add_argument("--data", help="a data folder in the public layout (uses its first pair)")
    p.add_argument("--model", help="model file; default: the bundled model, or an untrained one if none")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_demo)

    sub.add_parser("train", add_help=False, help="train a model (needs pip install .[train]; see labelreg train --help)")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        if command == "train":  # everything after 'train' belongs to the training command line
            return run_train(argv[argv.index("train") + 1:])
        try:
            args = build_parser().parse_args(argv)
        except UsageError as exc:
            _fail(exc)
            return 2
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        return int(args.func(args) or 0)
    except LabelRegError as exc:
        _fail(exc)
    except RegistrationCancelled:
        _fail("cancelled")
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # the one place that turns surprises into one line
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the full traceback)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
