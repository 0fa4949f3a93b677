"""MSVMamba backbone for mmpretrain, mmdet and mmseg.

Import it in a config with ``custom_imports=dict(imports=['projects.msvmamba'])`` and use
``backbone=dict(type='MSVMamba', arch='tiny', ...)``. The class is registered in the
``MODELS`` registry of each OpenMMLab package that is installed; without any of them it
is still a plain PyTorch module.
"""
import importlib

from .checkpoint import convert_to_mmpretrain, load_checkpoint_file, load_pretrained
from .msvmamba import MSVMamba

__all__ = ['MSVMamba', 'load_checkpoint_file', 'load_pretrained', 'convert_to_mmpretrain']


def _register(module: type):
    for package in ('mmpretrain', 'mmdet', 'mmseg'):
        try:
            registry = importlib.import_module(f'{package}.registry')
        except ImportError:  # that package is not installed: nothing to register into
            continue
        registry.MODELS.register_module(module=module, force=True)


_register(MSVMamba)
