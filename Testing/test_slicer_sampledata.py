"""The bundled MR-TRUS pair in Slicer's Sample Data module, with a stand-in of SampleData's
registration API (``SampleDataLogic.registerCustomSampleDataSource``, same signature and
checks as Slicer's Modules/Scripted/SampleData/SampleData.py)."""
import hashlib
import sys
import types
import urllib.request
from pathlib import Path

import pytest

try:
    import slicer as _slicer_core  # noqa: F401  (pip install slicer-core)
except ImportError as exc:
    pytest.skip(f"slicer-core is not available: {exc}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("clean_scene")


class SampleDataSource:
    """SampleData.SampleDataSource's bookkeeping: lists of equal length, sources compared by text."""

    def __init__(self, sampleName=None, uris=None, fileNames=None, nodeNames=None, checksums=None, loadFiles=None,
                 customDownloader=None, thumbnailFileName=None, loadFileType=None, loadFileProperties=None):
        count = len(uris)
        self.sampleName, self.uris, self.fileNames, self.nodeNames = sampleName, uris, fileNames, nodeNames
        self.checksums = checksums or [None] * count
        self.loadFiles = loadFiles or [None] * count
        self.loadFileType = [loadFileType] * count if isinstance(loadFileType, str) else loadFileType
        self.customDownloader, self.thumbnailFileName = customDownloader, thumbnailFileName
        if not count == len(fileNames) == len(nodeNames) == len(self.checksums) == len(self.loadFileType):
            raise ValueError("All fields of sample data source must have the same length")

    def __eq__(self, other):
        return str(self) == str(other)

    def __str__(self):
        return repr(sorted(vars(self).items(), key=lambda item: item[0]))


@pytest.fixture
def sample_data(slicer, monkeypatch):
    """A ``SampleData`` module whose logic registers sources in ``slicer.modules.sampleDataSources``."""
    module = types.ModuleType("SampleData")

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileType="VolumeFile", loadFiles=None,
                                           loadFileProperties={},  # noqa: B006  (Slicer's signature)
                                           checksums=None):
            sources = slicer.modules.sampleDataSources.setdefault(category, [])
            source = SampleDataSource(sampleName, uris, fileNames, nodeNames, checksums, loadFiles, customDownloader,
                                      thumbnailFileName, loadFileType, loadFileProperties)
            if source not in sources:
                sources.append(source)

    module.SampleDataLogic = SampleDataLogic
    monkeypatch.setitem(sys.modules, "SampleData", module)
    monkeypatch.setattr(slicer.modules, "sampleDataSources", {}, raising=False)
    return slicer.modules.sampleDataSources


def test_the_sample_pair_is_registered_at_startup(slicer, module, sample_data, tmp_path):
    from LabelRegLib import sampledata

    module.LabelReg(types.SimpleNamespace())  # the module connects to startupCompleted()
    slicer.app.emit("startupCompleted()")
    slicer.app.emit("startupCompleted()")  # registering again adds nothing
    (source,) = sample_data[sampledata.CATEGORY]
    assert source.sampleName == sampledata.SAMPLE_NAME and Path(source.thumbnailFileName).is_file()
    assert source.loadFileType == ["VolumeFile", "VolumeFile"] and source.nodeNames == ["obs003 MR", "obs003 TRUS"]
    # what SampleData.downloadFile does with each URI, then its checksum check
    for uri, fileName, checksum in zip(source.uris, source.fileNames, source.checksums):
        copy, _ = urllib.request.urlretrieve(uri, tmp_path / fileName)
        algorithm, digest = checksum.split(":")
        assert algorithm == "SHA256" and hashlib.sha256(Path(copy).read_bytes()).hexdigest() == digest


def test_every_bundled_sample_file_has_its_checksum(slicer):
    from labelreg import resources
    from LabelRegLib import sampledata

    for role, _, _, digest in sampledata.FILES:
        assert hashlib.sha256(resources.sample_pair_file(role).read_bytes()).hexdigest() == digest, role


def test_the_sample_data_button_loads_the_pair_into_the_module(slicer, module, sample_data):
    from LabelRegLib import nodes, sampledata

    module.registerSampleData()
    (source,) = sample_data[sampledata.CATEGORY]
    before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    loaded = source.customDownloader(source)  # the Sample Data module's button
    assert sorted(loaded) == ["fixedSegmentation", "fixedVolume", "movingSegmentation", "movingVolume"]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == before + 2
    assert loaded["fixedVolume"].GetImageData().GetDimensions() == (47, 63, 44)
    assert loaded["movingVolume"].GetStorageNode() is None  # not tied to the installed files
    segmentation = loaded["movingSegmentation"].GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "gland", "landmark 1", "landmark 2", "landmark 3", "landmark 4"]
    labels = nodes.labelsFromNode(loaded["fixedSegmentation"], nodes.volumeFromNode(loaded["fixedVolume"]).grid)[0]
    assert labels.array.shape[0] == 5 and labels.array[0].sum() > 1000
    pn = module.LabelRegLogic().getParameterNode()
    assert (pn.fixedVolume, pn.movingVolume, pn.movingSegmentation, pn.fixedSegmentation) == (
        loaded["fixedVolume"], loaded["movingVolume"], loaded["movingSegmentation"], loaded["fixedSegmentation"])


def test_without_a_sample_data_module_nothing_is_registered(slicer, module, monkeypatch):
    monkeypatch.setitem(sys.modules, "SampleData", None)
    module.registerSampleData()  # e.g. a custom application without Sample Data: no error
