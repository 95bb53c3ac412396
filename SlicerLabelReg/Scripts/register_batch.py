"""Register one MR/TRUS pair with LabelReg in Slicer without a GUI and write the results.

    Slicer --no-main-window --python-script register_batch.py --fixed TRUS.nii.gz --moving MR.nii.gz
        [--moving-seg MR.seg.nrrd | MR-labels.nii.gz] [--fixed-seg TRUS-labels.nii.gz]
        --output-dir OUT [--overwrite] [--mode deformable|affine] [--device auto|cpu|cuda] [--model MODEL.pt]

Writes to OUT: ``<MR>-registered.seg.nrrd`` (the MR segmentation on the TRUS grid),
``<MR>-affine.h5`` and, in deformable mode, ``<MR>-deformable.h5`` (fixed -> moving, ITK
convention, as Slicer saves transforms), ``<MR>-resampled.nrrd`` (the MR on the TRUS grid).
OUT must be empty, or hold only earlier LabelReg outputs, which ``--overwrite`` replaces.
Segmentations are ``.seg.nrrd`` files or label volumes (3-D label maps, or 4-D one channel
per label; channel 0 the gland). Prints the timing (and Dice/landmark distances with
``--fixed-seg``); on failure prints the reason and exits with status 1 (2: bad arguments).

In an installed extension this file is ``<extension folder>/lib/Slicer-<X.Y>/qt-scripted-modules/
Scripts/register_batch.py`` (source tree: ``SlicerLabelReg/Scripts/``); Slicer prints its path with

    Slicer --no-main-window --python-code "import os, slicer; print(os.path.join(os.path.dirname(
        slicer.modules.labelreg.path), 'Scripts', 'register_batch.py')); slicer.util.exit()"
"""
import argparse
import os
import sys
import time

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parseArguments(argv):
    from labelreg.choices import DEVICES, USER_MODES

    parser = argparse.ArgumentParser(prog="register_batch.py", description="LabelReg MR -> TRUS registration")
    parser.add_argument("--fixed", required=True, help="TRUS volume (fixed)")
    parser.add_argument("--moving", required=True, help="MR volume (moving)")
    parser.add_argument("--moving-seg", help="MR segmentation (.seg.nrrd) or label volume")
    parser.add_argument("--fixed-seg", help="TRUS segmentation, to report Dice and landmark distances")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace earlier LabelReg outputs in --output-dir")
    parser.add_argument("--mode", choices=USER_MODES, default="deformable")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--model", default="", help="model file (.pt with its .json); default: the bundled model")
    return parser.parse_args(argv)


def loadSegmentation(path, referenceNode):
    """A segmentation node from a .seg.nrrd file or a 3-D/4-D label volume on the reference's voxels."""
    import slicer
    from labelreg.io import read_labels
    from LabelRegLib import nodes

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    if path.lower().endswith(".seg.nrrd"):
        return slicer.util.loadSegmentation(path)
    labels = read_labels(path, nodes.volumeFromNode(referenceNode).grid)
    return nodes.addLabelSegmentation(os.path.basename(path).split(".")[0], labels)


def loadVolume(path):
    import slicer

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    return slicer.util.loadVolume(path)


def save(node, path):
    import slicer

    if not slicer.util.saveNode(node, path):
        raise OSError(f"{path}: could not be written")
    print(f"wrote {path}")


def main(argv) -> int:
    if MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)
    try:
        args = parseArguments(argv)
    except SystemExit as exc:  # argparse printed the usage
        return int(exc.code or 0)
    try:
        start = time.perf_counter()
        import LabelReg
        from labelreg.outputs import prepare_output_dir

        fixed, moving = loadVolume(args.fixed), loadVolume(args.moving)
        movingSeg = loadSegmentation(args.moving_seg, moving) if args.moving_seg else None
        fixedSeg = loadSegmentation(args.fixed_seg, fixed) if args.fixed_seg else None
        prepare_output_dir(args.output_dir, args.overwrite)  # before the (slow) registration
        logic = LabelReg.LabelRegLogic()
        try:  # the registration runs in LabelReg's worker process, ended here
            outputs = logic.register(fixed, moving, movingSeg, mode=args.mode, device=args.device,
                                     modelPath=args.model, fixedSegmentationNode=fixedSeg, hardenSegmentation=True)
        finally:
            logic.shutdown()
        stem = os.path.join(args.output_dir, os.path.basename(args.moving).split(".")[0])
        save(outputs.affineTransformNode, f"{stem}-affine.h5")
        if args.mode == "deformable":
            save(outputs.transformNode, f"{stem}-deformable.h5")
        if outputs.segmentationNode is not None:
            save(outputs.segmentationNode, f"{stem}-registered.seg.nrrd")
        save(outputs.volumeNode, f"{stem}-resampled.nrrd")
        print(outputs.summary)
        print(f"LabelReg batch: finished in {time.perf_counter() - start:.2f} s")
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message and a status
        print(f"LabelReg batch registration failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    import slicer

    slicer.util.exit(main(sys.argv[1:]))
