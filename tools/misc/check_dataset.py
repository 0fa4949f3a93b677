#!/usr/bin/env python
"""Check a config's datasets before a run: decode every image, check every annotation.

    python tools/misc/check_dataset.py CONFIG [--splits train val test] [--workers N]
        [--cfg-options KEY=VALUE ...]

Lists every problem with its file; exit status 1 when there is any, 0 when the data is
clean, 2 for a mistake in the command or the config. The implementation is
projects/msvmamba_mm/dataset_check.py.
"""
import argparse
import sys

from projects.msvmamba_mm.dataset_check import SPLITS, check_config, default_workers
from projects.msvmamba_mm.tooling import add_config_arguments, run_main


def _main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/misc/check_dataset.py',
        description='Decode every image and check every annotation of the datasets of a '
        'config; list the problems with their files (exit status 1 if any).')
    add_config_arguments(parser)
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], choices=SPLITS,
                        help='dataloaders to check (default: train val)')
    parser.add_argument('--workers', type=int, default=default_workers(),
                        help='processes that decode images (default: the CPU cores, at '
                        'most 8; 0: this process)')
    args = parser.parse_args(argv)
    if check_config(args.config, args.splits, args.cfg_options, workers=args.workers):
        raise SystemExit(1)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
