"""Render the LabelReg module panel (``SlicerLabelReg/Resources/UI/LabelReg.ui``) to a PNG for
the README, without Slicer: Slicer/CTK widgets are replaced by their closest Qt classes
(``qMRMLNodeComboBox`` -> QComboBox showing an example node, ``ctkCollapsibleButton`` ->
QGroupBox, ``ctkPathLineEdit`` -> QLineEdit, ``ctkSliderWidget`` -> QSlider) and the panel is
drawn with Qt's offscreen platform.

    pip install pyside6-essentials
    python docs/render_panel.py [--output docs/module-panel.png]
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
UI_FILE = HERE.parent / "SlicerLabelReg" / "Resources" / "UI" / "LabelReg.ui"

#: what each node selector shows in the picture (as after loading a case and registering it)
EXAMPLE_NODES = {
    "fixedVolumeSelector": "obs000 TRUS",
    "movingVolumeSelector": "obs000 MR",
    "movingSegmentationSelector": "obs000 MR gland + landmarks",
    "fixedSegmentationSelector": "None",
    "outputTransformSelector": "MR-to-TRUS deformable",
    "outputAffineTransformSelector": "MR-to-TRUS affine",
    "outputSegmentationSelector": "MR-to-TRUS segmentation",
    "outputVolumeSelector": "MR-to-TRUS resampled",
}
# no invented figures: the picture shows where the results line appears, not a result
EXAMPLE_RESULT = "Time taken, device, and (with a TRUS segmentation) gland Dice and landmark distances appear here."
REPLACEMENTS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "ctkPathLineEdit": "QLineEdit",
                "ctkSliderWidget": "QSlider", "qMRMLNodeComboBox": "QComboBox"}


def plain_qt_ui(path: Path) -> bytes:
    """The .ui with Slicer/CTK classes and properties replaced by plain Qt ones."""
    root = ET.parse(path).getroot()
    for parent in root.iter():
        for child in list(parent):
            if child.tag in ("customwidgets", "connections"):
                parent.remove(child)
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls not in REPLACEMENTS:
            continue
        widget.set("class", REPLACEMENTS[cls])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if cls == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
            elif cls == "ctkSliderWidget" and name in ("minimum", "maximum", "singleStep", "value"):
                number = prop.find("double")
                number.tag, number.text = "number", str(round(float(number.text) * 100))
            elif name not in ("toolTip", "enabled", "geometry") and prop.get("stdset") != "0":
                widget.remove(prop)
        if cls == "ctkSliderWidget":
            orientation = ET.SubElement(widget, "property", name="orientation")
            ET.SubElement(orientation, "enum").text = "Qt::Horizontal"
    return ET.tostring(root, encoding="utf-8")


def render(output: Path, width: int = 460) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit, QProgressBar, QPushButton

    app = QApplication.instance() or QApplication(sys.argv[:1])
    buffer = QBuffer()
    buffer.setData(QByteArray(plain_qt_ui(UI_FILE)))
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"Qt could not load {UI_FILE}")
    for name, text in EXAMPLE_NODES.items():
        panel.findChild(QComboBox, name).addItem(text)
    panel.findChild(QLineEdit, "modelPathLineEdit").setPlaceholderText("(bundled model: labelreg_mrus.pt)")
    button = panel.findChild(QPushButton, "registerButton")
    button.setEnabled(True)
    panel.findChild(QProgressBar, "progressBar").setValue(100)
    panel.findChild(QLabel, "statusLabel").setText("Done.")
    panel.findChild(QLabel, "resultsLabel").setText(EXAMPLE_RESULT)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "module-panel.png")
    print(render(parser.parse_args(argv).output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
