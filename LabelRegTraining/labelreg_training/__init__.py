"""Headless training, evaluation and export for LabelReg (imports the labelreg library)."""
