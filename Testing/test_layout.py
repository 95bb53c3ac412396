"""The product's layout: the library, the Slicer module, the training package with the bundled
model's recipe, the tests, benchmarks and tools. The record of experiments lives in one
top-level folder of its own, which nothing here imports or names."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("SlicerLabelReg", "LabelRegTraining", "benchmarks", "Testing", "tools")
RECORD = "re" + "search"  # spelt so that this file does not name it itself
#: a path into the record, or an import of it
NAMES_THE_RECORD = re.compile(rf"""\b{RECORD}[/\\]|\b(?:import|from)\s+{RECORD}\b|["']{RECORD}["']""")
RECIPE_SCRIPTS = REPO / "LabelRegTraining" / "scripts"


def product_files(*suffixes):
    for folder in PRODUCT:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in suffixes and path.is_file() and "__pycache__" not in path.parts:
                yield path


def test_the_product_never_imports_or_names_the_experiment_record():
    files = list(product_files(".py", ".sh"))
    assert len(files) > 20 and Path(__file__).resolve() in files
    named = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if NAMES_THE_RECORD.search(line)]
    assert named == []


def test_the_training_configs_are_those_the_recipe_scripts_use():
    """LabelRegTraining/configs holds the bundled recipe's configs and nothing else: each is named
    by a script in LabelRegTraining/scripts, and each config a script names is there."""
    named = {m for script in RECIPE_SCRIPTS.glob("*.sh")
             for m in re.findall(r"configs/([\w.-]+\.json)", script.read_text(encoding="utf-8"))}
    shipped = {p.name for p in (REPO / "LabelRegTraining" / "configs").iterdir()}
    assert shipped and named == shipped
