"""The bundled MR-TRUS pair (``labelreg.resources.SAMPLE_PAIR_DIR``, obs003) in Slicer's Sample
Data module.

The source lists the two images as local ``file://`` URIs with their SHA256, so that
``SampleData.downloadSample(SAMPLE_NAME)`` copies and checks them like any sample; its button
(``customDownloader``) loads the whole pair instead: both images, the 4-D gland/landmark labels
as segmentations, and selects them in the LabelReg module.
"""
from __future__ import annotations

CATEGORY = "LabelReg"
SAMPLE_NAME = "LabelRegProstateMRTRUS"
#: the sample pair's files: (role folder, node name, file name in Slicer's cache, SHA256)
FILES = (
    ("moving_images", "obs003 MR", "LabelReg-obs003-MR.nii.gz",
     "3c5f59eecef15f3b0dae6015c1b25d81b7a1b51b068709ea9631afda0a2f1695"),
    ("fixed_images", "obs003 TRUS", "LabelReg-obs003-TRUS.nii.gz",
     "2fcf3d75c74b458625d319ade9a95b58f1667482a13caa924e23ad8bf2e6e2ac"),
    ("moving_labels", "obs003 MR gland and landmarks", "LabelReg-obs003-MR-labels.nii.gz",
     "526a1c3a8ff592f8de43f6c46200b8c8d4eb19e263c0baffc898e82c15d7ca46"),
    ("fixed_labels", "obs003 TRUS gland and landmarks", "LabelReg-obs003-TRUS-labels.nii.gz",
     "512989ca73bd865ba1c4d29c8725b265b0c4458520930a4ad32be00031d56388"),
)
IMAGES = FILES[:2]  # what SampleData itself loads: 4-D label volumes are not Slicer volumes


def sourceArguments(thumbnailFileName: str | None = None, customDownloader=None) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``."""
    from labelreg import resources

    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [resources.sample_pair_file(role).as_uri() for role, _, _, _ in IMAGES],
        "fileNames": [fileName for _, _, fileName, _ in IMAGES],
        "nodeNames": [nodeName for _, nodeName, _, _ in IMAGES],
        "checksums": [f"SHA256:{digest}" for _, _, _, digest in IMAGES],
        "thumbnailFileName": thumbnailFileName,
        "loadFileType": "VolumeFile",
        "customDownloader": customDownloader,
    }


def register(thumbnailFileName: str | None = None, customDownloader=None) -> bool:
    """Register the pair with the Sample Data module; False where there is none."""
    try:
        import SampleData
    except ImportError:
        return False
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sourceArguments(thumbnailFileName, customDownloader))
    return True


def loadPair() -> dict:
    """Load the pair into the scene: ``fixedVolume``, ``movingVolume`` and, where torch is
    available (reading 4-D labels uses the library), ``movingSegmentation`` and
    ``fixedSegmentation`` (segments: gland, landmark 1, ...). The nodes are not tied to the
    bundled files (as Sample Data does, their storage nodes are removed)."""
    import slicer
    from labelreg import resources

    from LabelRegLib import dependencies

    loaded = {}
    for key, (role, nodeName, _, _) in zip(("movingVolume", "fixedVolume"), IMAGES):
        node = slicer.util.loadVolume(str(resources.sample_pair_file(role)), {"name": nodeName, "show": False})
        _forgetFile(node)
        loaded[key] = node
    if dependencies.torchProblem() is None:
        from labelreg.io import read_labels

        from LabelRegLib import nodes

        for key, (role, nodeName, _, _), volume in (("movingSegmentation", FILES[2], loaded["movingVolume"]),
                                                    ("fixedSegmentation", FILES[3], loaded["fixedVolume"])):
            grid = nodes.volumeFromNode(volume).grid
            labels = read_labels(resources.sample_pair_file(role), grid)
            loaded[key] = nodes.addLabelSegmentation(nodeName, labels)
            nodes.showAsOutlines(loaded[key])
    return loaded


def _forgetFile(node) -> None:
    storage = node.GetStorageNode()
    if storage is not None:
        node.SetAndObserveStorageNodeID(None)
        node.GetScene().RemoveNode(storage)
