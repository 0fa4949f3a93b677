#!/usr/bin/env python
"""Draw the ground truth of a config's dataset, after its data pipeline, to PNG files.

    python tools/analysis_tools/browse_dataset.py CONFIG --output-dir DIR \\
        [--phase train|val|test] [--max-num N] [--cfg-options KEY=VALUE ...]

Works for detection (boxes + masks), segmentation (label overlay) and classification
(class name) configs: the config's ``default_scope`` picks the package, whose visualizer
(the config's ``visualizer``) draws. The images are what the model receives, i.e. after
the phase's pipeline (resizing, flipping, cropping, ...). The implementation is
projects/msvmamba_mm/browse.py.
"""
import argparse
import sys

from projects.msvmamba_mm.browse import browse_dataset
from projects.msvmamba_mm.tooling import add_config_arguments, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/analysis_tools/browse_dataset.py',
        description="Draw the ground truth of a config's dataset to PNG files.")
    add_config_arguments(parser)
    parser.add_argument('--output-dir', required=True, help='folder for the PNG files')
    parser.add_argument('--phase', choices=('train', 'val', 'test'), default='train',
                        help='which dataloader\'s dataset and pipeline (default train)')
    parser.add_argument('--max-num', type=int, default=10,
                        help='draw at most this many samples (default 10)')
    return parser.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    browse_dataset(args.config, args.output_dir, args.phase, args.max_num, args.cfg_options)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
