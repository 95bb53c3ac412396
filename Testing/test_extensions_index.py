"""The extension description file (LabelReg.json) and the top-level CMakeLists.txt against the
Extensions Index's own checks, reproduced offline from its ``scripts/check_description_files.py``
(Slicer/ExtensionsIndex): the catalog-entry JSON schema v1.0.2 (Slicer/Slicer
``Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json``), the category list, the extension
and repository names, the scm URL, ``project()`` against the file name, the icon and screenshot
URLs (here: raw GitHub URLs of files in this repository, which must be PNG or JPEG images), the
license file and the build dependencies. Plus the index's documented conventions: contributors
as "Name (Organisation)", EXTENSION_DEPENDS matching ``build_dependencies``.
Needs neither Slicer nor torch."""
import json
import os
import re
import urllib.parse as urlparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESCRIPTION = REPO / "LabelReg.json"

#: check_description_files.py ACCEPTED_EXTENSION_CATEGORIES
ACCEPTED_EXTENSION_CATEGORIES = [
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration",
    "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression",
    "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely",
    "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography", "Training",
    "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools",
    "Wizards",
]
#: slicer-extension-catalog-entry-schema-v1.0.2.json: property -> (type, extra rule)
SCHEMA = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int,
}
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
LICENSE_FILE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
#: extensions of the index that this one may depend on (their description files exist there)
KNOWN_INDEX_EXTENSIONS = {"PyTorch", "SlicerIGT", "OpenIGTLinkIF", "SegmentEditorExtraEffects"}


def metadata() -> dict:
    return json.loads(DESCRIPTION.read_text())


def cmake() -> str:
    return (REPO / "CMakeLists.txt").read_text()


def cmake_list(name: str) -> list:
    """The quoted values of ``set(NAME "a" "b" ...)``."""
    body = re.search(rf'set\s*\(\s*{name}((?:\s+"[^"]*")+)\s*\)', cmake()).group(1)
    return re.findall(r'"([^"]*)"', body)


def check_json_schema(data: dict) -> list:
    errors = [f"'{key}' is a required property" for key in SCHEMA_REQUIRED if key not in data]
    errors += [f"additional property {key!r}" for key in data if key not in SCHEMA]
    for key, value in data.items():
        kind = SCHEMA.get(key)
        if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            errors.append(f"{key}: {value!r} is not of type {kind.__name__}")
    if not all(isinstance(item, str) for item in data.get("build_dependencies", [])):
        errors.append("build_dependencies: items must be strings")
    if data.get("scm_type", "git") not in ("git", "local"):
        errors.append("scm_type must be 'git' or 'local'")
    if isinstance(data.get("tier"), int) and not 1 <= data["tier"] <= 5:
        errors.append("tier must be within 1..5")
    return errors


def test_description_file_passes_the_schema():
    data = metadata()
    assert check_json_schema(data) == []
    assert data["$schema"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                               "slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert check_json_schema({"category": "Registration", "scm_url": "x", "scmurl": "x", "tier": 9}) == [
        "'$schema' is a required property", "additional property 'scmurl'", "tier must be within 1..5"]


def test_category_is_accepted():
    assert metadata()["category"] in ACCEPTED_EXTENSION_CATEGORIES
    assert cmake_list("EXTENSION_CATEGORY") == [metadata()["category"]]


def test_extension_and_repository_names():
    """check_extension_name: the extension name (the description file's name) must not start
    with "Slicer"; check_git_repository_name: the repository's must contain "slicer";
    check_cmakelists_content: project() must be the extension name."""
    extension_name = DESCRIPTION.stem
    assert not extension_name.lower().startswith("slicer")
    repo_name = os.path.splitext(urlparse.urlsplit(metadata()["scm_url"]).path.split("/")[-1])[0]
    assert "slicer" in repo_name.lower()
    matches = re.findall(r'project\s*\(\s*([^\s\)\n\r]+)', cmake(), re.IGNORECASE | re.MULTILINE)
    assert matches and matches[0].strip().strip('"').strip("'") == extension_name
    assert not list(REPO.glob("Slicer*.json")), "one description file, named after the extension"


def test_scm_url():
    url = metadata()["scm_url"]
    assert "://" in url and urlparse.urlsplit(url).scheme in ("git", "https")
    assert url == cmake_list("EXTENSION_HOMEPAGE")[0]
    assert metadata().get("scm_revision") == "main"


def _repository_file(url: str, kind: str) -> Path:
    """The file of this repository a raw GitHub URL of the extension's repository points to."""
    owner_repo = urlparse.urlsplit(metadata()["scm_url"]).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{metadata()['scm_revision']}/"
    assert url.startswith(prefix), f"{kind} {url} is not a raw URL of {owner_repo}'s {metadata()['scm_revision']}"
    return REPO / url[len(prefix):]


def _image_type(path: Path) -> str:
    head = path.read_bytes()[:8]
    return "png" if head == b"\x89PNG\r\n\x1a\n" else "jpeg" if head[:3] == b"\xff\xd8\xff" else "other"


def test_icon_and_screenshot_urls():
    """check_cmakelists_content's patterns; validate_image_url wants an image (here: the file
    the URL will serve once pushed)."""
    text = cmake()
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.IGNORECASE | re.MULTILINE)
    assert icons and icons[0].startswith("http")
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.IGNORECASE | re.MULTILINE)
    assert screenshots, "EXTENSION_SCREENSHOTURLS must be one quoted string of URLs"
    urls = screenshots[0].split()
    assert urls and all(url.startswith("http") for url in urls)
    for url, kind in [(icons[0], "EXTENSION_ICONURL")] + [(url, "EXTENSION_SCREENSHOTURLS") for url in urls]:
        path = _repository_file(url, kind)
        assert path.is_file() and _image_type(path) in ("png", "jpeg"), f"{kind}: {path} is not an image"
        assert path.suffix.lower() in (".png", ".jpg", ".jpeg")


def test_license_file():
    assert any((REPO / name).is_file() for name in LICENSE_FILE_NAMES)


def test_build_dependencies_are_index_extensions_and_match_cmake():
    dependencies = metadata().get("build_dependencies", [])
    assert set(dependencies) <= KNOWN_INDEX_EXTENSIONS
    assert cmake_list("EXTENSION_DEPENDS") == (dependencies or ["NA"])


def test_contributors_are_name_and_organisation():
    pattern = re.compile(r"^[^(),]+ \([^()]+\)$")
    contributors = cmake_list("EXTENSION_CONTRIBUTORS")
    entries = [entry.strip() for value in contributors for entry in re.split(r",(?![^()]*\))", value)]
    assert entries and all(pattern.match(entry) for entry in entries), entries
    module = (REPO / "SlicerLabelReg" / "LabelReg.py").read_text()
    declared = re.search(r"self\.parent\.contributors = \[(.*?)\]", module).group(1)
    assert re.findall(r'"([^"]*)"', declared) == contributors
