#!/usr/bin/env python
"""Print a config as the tools see it: bases merged, ``--cfg-options`` applied.

    python tools/misc/print_config.py CONFIG [--cfg-options KEY=VALUE ...] [--save FILE.py]
"""
import argparse
import sys

from projects.msvmamba_mm.cli import load_config
from projects.msvmamba_mm.tooling import add_config_arguments, run_main


def _main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/misc/print_config.py',
        description='Print the fully merged config (bases and --cfg-options applied).')
    add_config_arguments(parser)
    parser.add_argument('--save', metavar='FILE.py', help='also write the merged config')
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    print(cfg.pretty_text)
    if args.save:
        cfg.dump(args.save)
        print(f'saved the merged config to {args.save}', file=sys.stderr)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
