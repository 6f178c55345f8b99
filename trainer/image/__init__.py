"""Image collections' training: multi-view logo training, fusion fitting and calibration."""
