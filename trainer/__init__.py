"""strop's learning half: training jobs that mine, fine-tune, evaluate and publish versions.

Imports ``index``; never ``service``. The service imports only ``strop.trainer.contract``.
"""
