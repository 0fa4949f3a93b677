#!/usr/bin/env python
"""Train with an mmpretrain, mmdet or mmseg config (routed by its default_scope).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

Distributed: tools/dist_train.sh (torchrun) or tools/slurm_train.sh. The implementation
is projects/msvmamba_mm/cli.py.
"""
import sys

from projects.msvmamba_mm.cli import train_main

if __name__ == '__main__':
    sys.exit(train_main())
