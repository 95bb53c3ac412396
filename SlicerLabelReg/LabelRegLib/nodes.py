"""Slicer adapters: MRML nodes <-> :class:`labelreg.volume.Volume` (LPS, mm) and the output
transform nodes (RAS).

Frames. MRML nodes live in RAS; the library works in LPS. Every conversion goes through
``labelreg.transforms`` (``matrix_lps_to_ras`` for point transforms, ``vectors_lps_to_ras``
for vectors and positions). Inputs are read in *world* coordinates: a parent transform of an
input node is applied to a copy of its data (linear: exact, by geometry; non-linear: by
Slicer's resampling), never to the input node itself.

Transform directions. The library's transforms map a fixed (TRUS) point to the moving (MR)
point that lands on it, i.e. ITK's resampling direction, which in Slicer is a transform
node's *TransformFromParent*. Nodes placed under the output transforms (the MR segmentation,
the MR volume) therefore appear aligned with the TRUS.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import slicer
import vtk
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.io import check_image_array, check_nifti_file
from labelreg.transforms import matrix_lps_to_ras, vectors_lps_to_ras, vectors_ras_to_lps
from labelreg.volume import Volume
from vtk.util import numpy_support

#: node reference roles set on every output node (as SlicerElastix tags its outputs)
FIXED_VOLUME_REF = "FixedVolume"
MOVING_VOLUME_REF = "MovingVolume"
MOVING_SEGMENTATION_REF = "MovingSegmentation"
SEGMENTATION_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode")


# -------------------------------------------------------------- geometry
def ijkToRasFromGrid(grid: Grid) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a grid (columns: axis vectors scaled by spacing, origin)."""
    index_to_lps = grid.index_to_lps
    out = np.eye(4)
    out[:3, :] = vectors_lps_to_ras(index_to_lps[:3, :].T).T  # every column is an LPS vector or point
    return out


def gridFromIjkToRas(ijkToRas: np.ndarray, size, name: str = "volume") -> Grid:
    """Grid of a volume with ``size`` (i, j, k) voxels and this IJK -> RAS matrix."""
    index_to_lps = vectors_ras_to_lps(np.asarray(ijkToRas, dtype=np.float64)[:3, :].T).T
    spacing = np.linalg.norm(index_to_lps[:, :3], axis=0)
    if np.any(spacing <= 0):
        raise LabelRegError(f"{name}: degenerate voxel spacing {spacing.tolist()}")
    try:
        direction = index_to_lps[:, :3] / spacing
        return Grid(tuple(size), tuple(spacing), tuple(index_to_lps[:, 3]), tuple(direction.ravel()))
    except ValueError as exc:
        raise LabelRegError(f"{name}: {exc}; harden a sheared parent transform before registering") from None


def _matrix(vtkMatrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtkMatrix)


def _worldImage(node) -> slicer.vtkOrientedImageData:
    """The node's voxels as an oriented image in world RAS (the parent transform applied to a copy)."""
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(node.GetImageData())
    ijkToRas = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijkToRas)
    image.SetImageToWorldMatrix(ijkToRas)
    if node.GetParentTransformNode() is not None:
        slicer.vtkSlicerSegmentationsModuleLogic.ApplyParentTransformToOrientedImageData(node, image, True)
    return image


def arrayAndGridFromImage(image, name: str):
    """(array (z, y, x) or (z, y, x, C), Grid) of an oriented image whose extent may not start at 0."""
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijkToRas = _matrix(matrix)
    ijkToRas[:3, 3] = ijkToRas[:3, :] @ np.array([extent[0], extent[2], extent[4], 1.0])
    scalars = image.GetPointData().GetScalars()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1] + ([scalars.GetNumberOfComponents()]
                                                                       if scalars.GetNumberOfComponents() > 1 else []))
    return array, gridFromIjkToRas(ijkToRas, dims, name)


# ------------------------------------------------------------ node -> library
@functools.lru_cache(maxsize=32)
def _sourceFileProblem(path: str, mtime_ns: int, size: int) -> str | None:
    """labelreg.io's NIfTI checks of a file, remembered while the file is unchanged (live updates
    re-read the MR node every frame)."""
    try:
        check_nifti_file(path)
    except LabelRegError as exc:
        return str(exc)
    return None


def _checkSourceFile(node, name: str) -> None:
    """Slicer reads NIfTI with ITK, which zero-fills a truncated file and reads NaN as 0: check
    the file a volume node was loaded from, while its voxels are still the file's."""
    storage = node.GetStorageNode()
    path = storage.GetFileName() if storage is not None and not node.GetModifiedSinceRead() else None
    if path and os.path.isfile(path):
        stat = os.stat(path)
        problem = _sourceFileProblem(path, stat.st_mtime_ns, stat.st_size)
        if problem:
            raise LabelRegError(f"{name}: loaded from a bad file: {problem}")


def volumeFromNode(node, role: str = "image") -> Volume:
    """A scalar volume node (in world coordinates) as a float32 :class:`Volume`.

    Raises LabelRegError for a missing, empty or incomplete (voxel values not matching its extent),
    non-scalar, non-3-D, constant or non-finite image, and for one loaded from a truncated NIfTI
    file or a NIfTI file with NaN voxels (that Slicer read as zeros).
    """
    if node is None:
        raise LabelRegError(f"Select the {role} volume.")
    name = node.GetName()
    image = node.GetImageData() if node.IsA("vtkMRMLScalarVolumeNode") else None
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if image is None or image.GetNumberOfPoints() == 0 or scalars is None:
        raise LabelRegError(f"{name}: the {role} volume has no image data; load or stream an image first.")
    if scalars.GetNumberOfTuples() != image.GetNumberOfPoints():
        raise LabelRegError(f"{name}: the {role} volume holds {scalars.GetNumberOfTuples()} voxel values for its "
                            f"{'x'.join(map(str, image.GetDimensions()))} extent ({image.GetNumberOfPoints()} voxels); "
                            "the image is incomplete: load it again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise LabelRegError(f"{name}: the {role} must be a scalar (grey-level) volume, not a vector or RGB image.")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise LabelRegError(f"{name}: the {role} must be a 3-D volume; "
                            f"this one is {dims[0]}x{dims[1]}x{dims[2]} voxels.")
    _checkSourceFile(node, f"{name} ({role})")
    array, grid = arrayAndGridFromImage(_worldImage(node), name)
    array = np.array(array, dtype=np.float32)  # a copy: the worker thread never touches VTK memory
    check_image_array(array, f"{name} ({role})")
    return Volume(array, grid, name)


def _resampleBinary(image, referenceGrid: Grid) -> np.ndarray:
    """Resample an oriented label image (world RAS) onto ``referenceGrid`` (nearest neighbour)."""
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(*referenceGrid.size)
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToRasFromGrid(referenceGrid)))
    output = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, output, False)
    array, _ = arrayAndGridFromImage(output, "labels")
    return array


def labelsFromNode(node, referenceGrid: Grid, role: str = "segmentation"):
    """Label channels of a segmentation (one per segment, in segment order) or of a labelmap
    volume (one per label value, ascending) on ``referenceGrid``.

    Returns:
        (Volume (C, z, y, x) float32 in {0, 1}, segment names, segment colours (r, g, b)).
    """
    name = node.GetName()
    channels, names, colors = [], [], []
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if segmentation.GetNumberOfSegments() and not segmentation.ContainsRepresentation(labelmapName):
            raise LabelRegError(f"{name}: the {role} has no binary labelmap representation; create it in the "
                                "Segmentations module (Representations: Binary labelmap, Create) first.")
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            image = slicer.vtkOrientedImageData()
            node.GetBinaryLabelmapRepresentation(segmentId, image)
            if image.GetNumberOfPoints() == 0:
                channels.append(np.zeros(referenceGrid.shape_zyx, dtype=np.float32))
            else:
                slicer.vtkSlicerSegmentationsModuleLogic.ApplyParentTransformToOrientedImageData(node, image, False)
                channels.append((_resampleBinary(image, referenceGrid) > 0).astype(np.float32))
            segment = segmentation.GetSegment(segmentId)
            names.append(segment.GetName())
            colors.append(tuple(segment.GetColor()))
    elif node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetImageData() is not None:
        resampled = _resampleBinary(_worldImage(node), referenceGrid)
        colorNode = node.GetDisplayNode().GetColorNode() if node.GetDisplayNode() else None
        for value in np.unique(slicer.util.arrayFromVolume(node)):
            if value <= 0:
                continue
            rgba = [1.0, 1.0, 0.0, 1.0]
            if colorNode is not None:
                colorNode.GetColor(int(value), rgba)
            channels.append((resampled == value).astype(np.float32))
            names.append(colorNode.GetColorName(int(value)) if colorNode else f"label {int(value)}")
            colors.append(tuple(rgba[:3]))
    else:
        raise LabelRegError(f"{name}: the {role} must be a segmentation or a labelmap volume.")
    if not channels:
        raise LabelRegError(f"{name}: the {role} is empty; it needs at least one segment (the gland first).")
    empty = [names[c] for c in range(len(channels)) if not channels[c].any()]
    if empty:
        raise LabelRegError(f"{name}: segment(s) {empty} have no voxels inside the volume; remove them or fix them.")
    return Volume(np.stack(channels), referenceGrid, name), names, colors


# ---------------------------------------------------------- library -> nodes
def _orientedImage(array: np.ndarray, grid: Grid):
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*grid.size)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToRasFromGrid(grid)))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(array, np.uint8).ravel()
    return image


def fillSegmentation(segmentationNode, channels: np.ndarray, grid: Grid, names, colors=None, threshold: float = 0.5):
    """Replace the segments of ``segmentationNode`` with binary channels (C, z, y, x) on ``grid``."""
    segmentation = segmentationNode.GetSegmentation()
    segmentation.RemoveAllSegments()
    for index, channel in enumerate(channels):
        segmentId = segmentation.AddEmptySegment("", names[index], colors[index] if colors else None)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _orientedImage(channel >= threshold, grid), segmentationNode, segmentId)
    return segmentationNode


def addLabelSegmentation(name: str, labels: Volume):
    """A new segmentation node ``name`` with one segment per label channel: "gland" (channel 0),
    then "landmark 1", "landmark 2", ... (the data set's channel order)."""
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    names = ["gland"] + [f"landmark {c}" for c in range(1, labels.channels.shape[0])]
    return fillSegmentation(segmentationNode, labels.channels, labels.grid, names)


def addVolume(name: str, volume: Volume):
    """A new scalar volume node ``name`` holding a library :class:`Volume`."""
    return setVolumeArray(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name), volume.array,
                          volume.grid)


def setVolumeArray(volumeNode, array: np.ndarray, grid: Grid):
    """Put a (z, y, x) array on ``grid`` into a scalar volume node (world geometry, no parent)."""
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRasFromGrid(grid)))
    slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(array))
    return volumeNode


def setAffineTransform(transformNode, affine_lps: np.ndarray):
    """Store a 4x4 LPS fixed -> moving matrix as the node's TransformFromParent (in RAS)."""
    transformNode.SetMatrixTransformFromParent(slicer.util.vtkMatrixFromArray(matrix_lps_to_ras(affine_lps)))
    return transformNode


def setDisplacementTransform(transformNode, ddf_lps: np.ndarray, grid: Grid):
    """Store a (z, y, x, 3) LPS displacement field on ``grid`` (fixed -> moving, mm) as the node's
    TransformFromParent: a vtkOrientedGridTransform with RAS vectors and the grid's directions."""
    ijkToRas = ijkToRasFromGrid(grid)
    displacement = vtk.vtkImageData()
    displacement.SetDimensions(*grid.size)
    displacement.SetSpacing(*grid.spacing)
    displacement.SetOrigin(*ijkToRas[:3, 3])
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    vectors = numpy_support.vtk_to_numpy(displacement.GetPointData().GetScalars())
    vectors[:] = vectors_lps_to_ras(np.asarray(ddf_lps, dtype=np.float64)).reshape(-1, 3)
    direction = np.eye(4)
    direction[:3, :3] = ijkToRas[:3, :3] / np.asarray(grid.spacing)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(direction))
    transform.SetDisplacementGridData(displacement)
    transform.SetInterpolationModeToLinear()
    transformNode.SetAndObserveTransformFromParent(transform)
    return transformNode


def showAsOutlines(segmentationNode):
    """Display a segmentation as outlines in the slice views and as a surface in 3D."""
    segmentationNode.CreateDefaultDisplayNodes()
    display = segmentationNode.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    segmentationNode.CreateClosedSurfaceRepresentation()


def tagOutput(node, fixedNode, movingNode, movingSegmentationNode=None, attributes=None):
    """Record which inputs produced an output node (node references) and how (attributes)."""
    node.SetNodeReferenceID(FIXED_VOLUME_REF, fixedNode.GetID() if fixedNode else None)
    node.SetNodeReferenceID(MOVING_VOLUME_REF, movingNode.GetID() if movingNode else None)
    node.SetNodeReferenceID(MOVING_SEGMENTATION_REF, movingSegmentationNode.GetID() if movingSegmentationNode else None)
    for key, value in (attributes or {}).items():
        node.SetAttribute(f"LabelReg.{key}", str(value))


def writeOutputs(request, outcome):
    """Create, or update the given, output nodes of a finished registration (main thread).

    Linear transform node: the affine (global) part. Grid transform node (deformable mode): the
    composite field; the output segmentation, a copy of the input one, goes under it (or under
    the affine in affine mode) unless it is hardened onto the TRUS grid. The resampled MR is the
    library's warping on the TRUS grid. Every output is tagged with its inputs.

    Returns:
        LabelRegLib.inference.LabelRegOutputs
    """
    from LabelRegLib.inference import LabelRegOutputs

    scene, context, result = slicer.mrmlScene, request.context, outcome.result
    fixedNode, movingNode = context["fixedVolumeNode"], context["movingVolumeNode"]
    baseName = f"{movingNode.GetName()}-to-{fixedNode.GetName()}"

    def output(key, className, suffix):
        node = context.get(key)
        if node is None or scene.GetNodeByID(node.GetID()) is not node:  # not given, or deleted meanwhile
            node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(f"{baseName} {suffix}"))
        tagOutput(node, fixedNode, movingNode, context["movingSegmentationNode"],
                  {"Mode": request.mode, "Device": outcome.device})
        return node

    deformable = request.mode == "deformable"
    affineNode = output("outputAffineTransformNode" if deformable else "outputTransformNode",
                        "vtkMRMLLinearTransformNode", "affine")
    setAffineTransform(affineNode, result.affine_lps)
    transformNode = affineNode
    if deformable:
        transformNode = output("outputTransformNode", "vtkMRMLGridTransformNode", "deformable")
        setDisplacementTransform(transformNode, result.ddf_lps, result.fixed_grid)
    segmentationNode = volumeNode = None
    if request.movingLabels is not None:
        segmentationNode = output("outputSegmentationNode", "vtkMRMLSegmentationNode", "segmentation")
        harden = context["hardenSegmentation"]
        labels, grid = ((result.warped_labels, result.fixed_grid) if harden
                        else (request.movingLabels.array, request.moving.grid))
        fillSegmentation(segmentationNode, labels, grid, request.segmentNames, request.segmentColors)
        segmentationNode.SetAndObserveTransformNodeID(None if harden else transformNode.GetID())
        showAsOutlines(segmentationNode)
    if context["createResampledVolume"]:
        volumeNode = output("outputVolumeNode", "vtkMRMLScalarVolumeNode", "resampled")
        setVolumeArray(volumeNode, result.warped_moving, result.fixed_grid)
        volumeNode.CreateDefaultDisplayNodes()
    return LabelRegOutputs(affineNode, transformNode, segmentationNode, volumeNode, outcome, fixedVolumeNode=fixedNode)
