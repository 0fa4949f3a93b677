#!/usr/bin/env python
"""Make tiny, deterministic datasets in the real on-disk formats of the OpenMMLab stack
(COCO instances, ADE20K, ImageNet folders; drawn shapes with exact annotations). The
implementation is projects/msvmamba_mm/tiny_data.py.

    python tools/dataset_converters/make_tiny_datasets.py {coco,ade20k,imagenet,all} \\
        [--out-dir data] [--num-train 8] [--num-val 4] [--size 128 128] [--seed 0] \\
        [--radius 0.1 0.25] [--class-colors]   # the last two: coco only

``all`` writes ``<out-dir>/tiny_coco``, ``<out-dir>/tiny_ade20k`` and
``<out-dir>/tiny_imagenet``.
"""
import argparse

from projects.msvmamba_mm.tiny_data import DEFAULT_SPLITS, MAKERS, make_datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('format', choices=[*MAKERS, 'all'])
    parser.add_argument('--out-dir', default='data',
                        help='parent folder; each dataset goes to <out-dir>/tiny_<format>')
    parser.add_argument('--num-train', type=int, default=DEFAULT_SPLITS['train'],
                        help='train images (per class for imagenet)')
    parser.add_argument('--num-val', type=int, default=DEFAULT_SPLITS['val'],
                        help='val images (per class for imagenet)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size (default 128 128; 64 64 for imagenet)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--radius', type=float, nargs=2, metavar=('MIN', 'MAX'),
                        help='coco: shape radius range as fractions of the short image '
                        'side (default 0.1 0.25)')
    parser.add_argument('--class-colors', action='store_true',
                        help='coco: one fixed colour per class instead of random colours '
                        '(an easier task, for fast demos)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    made = make_datasets(list(MAKERS) if args.format == 'all' else [args.format],
                         args.out_dir, dict(train=args.num_train, val=args.num_val),
                         args.size, args.seed, args.radius, args.class_colors)
    for fmt, (root, info) in made.items():
        print(f'{fmt}: wrote {root} (classes: {", ".join(info["classes"])})')


if __name__ == '__main__':
    main()
