#!/usr/bin/env python
"""Evaluate a checkpoint with an mmpretrain, mmdet or mmseg config (routed by its
default_scope).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--tta] [--amp] [--cfg-options KEY=VALUE ...]
        [--launcher none|pytorch|slurm|mpi]

Distributed: tools/dist_test.sh (torchrun) or tools/slurm_test.sh. The implementation
is projects/msvmamba_mm/cli.py.
"""
import sys

from projects.msvmamba_mm.cli import test_main

if __name__ == '__main__':
    sys.exit(test_main())
