"""Re-export the bundled model in model format 3: the same weights, with the frame and the fields of
view its networks were trained on, and its training domain (2026-12-02).

    python research/invariance/reexport_bundled.py --data ../shared/data/mrus
"""
import argparse
import json

from labelreg.model_io import load_model, save_model
from labelreg.resources import BUNDLED_MODEL_FILE as BUNDLED_MODEL
from labelreg_training.export import training_domain

SAVED_KEYS = ("format_version", "config", "weights_file", "sha256", "size_bytes")

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", required=True)
args = parser.parse_args()
model, metadata = load_model(BUNDLED_MODEL)
before = model.config.to_dict()
metadata = {k: v for k, v in metadata.items() if k not in SAVED_KEYS}
metadata["training_domain"] = training_domain(model, args.data, metadata["split"]["train_cases"])
metadata["reexported"] = ("2026-12-02: model format 3 (frame and fields of view recorded, training domain); "
                          "weights unchanged")
save_model(BUNDLED_MODEL, model, metadata)
after = model.config.to_dict()
print(json.dumps({k: after[k] for k in after if before.get(k) != after[k]}, indent=1))
print(json.dumps(metadata["training_domain"], indent=1))
