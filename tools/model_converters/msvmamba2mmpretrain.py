#!/usr/bin/env python
"""Convert an official MSVMamba classification checkpoint to an mmpretrain one.

    python tools/model_converters/msvmamba2mmpretrain.py IN OUT [--ema]

IN is an upstream training checkpoint of either branch (master Nano/Micro/Tiny or v2
MSVMambav3): weights under 'model' and 'model_ema', next to optimizer state and a yacs
config. It is read with torch.load(weights_only=True), yacs not needed
(projects/msvmamba/checkpoint.py); a file that asks for more is refused, never run. OUT is
``{'state_dict': ..., 'meta': ...}`` for an mmpretrain ImageClassifier with
``backbone=dict(type='MSVMamba', arch=...)``, a GlobalAveragePooling neck and a
LinearClsHead: ``classifier.norm.*`` -> ``backbone.final_norm.*``,
``classifier.head.*`` -> ``head.fc.*``, everything else -> ``backbone.*``.
"""
import argparse
import os
import os.path as osp
import sys

import torch

from projects.msvmamba.checkpoint import (CheckpointError,
                                          convert_to_mmpretrain, extract_state_dict,
                                          load_checkpoint_file)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official MSVMamba classification checkpoint')
    parser.add_argument('dst', help='output mmpretrain checkpoint')
    parser.add_argument('--ema', action='store_true',
                        help="convert the 'model_ema' weights instead of 'model'")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ckpt = load_checkpoint_file(args.src)
    except CheckpointError as err:  # the message names the file and the fix
        raise SystemExit(f'error: {err}')
    state_dict, where = extract_state_dict(ckpt, use_ema=args.ema, source=args.src)
    if not any(k.startswith('classifier.head.') for k in state_dict):
        raise SystemExit(f'{args.src} ({where}) has no classifier.head.*: not a '
                         'classification checkpoint')
    converted = convert_to_mmpretrain(state_dict)
    # Plain tensors and strings only, so torch.load(weights_only=True) reads the result.
    meta = dict(source=osp.basename(args.src), weights='model_ema' if args.ema else 'model',
                converter='tools/model_converters/msvmamba2mmpretrain.py')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save({'state_dict': {k: v.detach().clone() for k, v in converted.items()},
                'meta': meta}, args.dst)
    print(f'{args.src} ({where}): {len(converted)} tensors -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
