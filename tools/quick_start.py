#!/usr/bin/env python
"""Quick start: train, evaluate and visualise Mask R-CNN + MSVMamba-Nano on a tiny dataset.

    python tools/quick_start.py [--iters N] [--work-dir DIR] [--data-dir DIR] [--amp]

One command, five steps, each with this checkout's own tools (run from the repository
root; a few minutes on a CPU):

1. make the tiny COCO-format shapes dataset (``tools/dataset_converters/
   make_tiny_datasets.py``) under ``--data-dir`` unless it is already there;
2. train ``configs/quick_start/mask_rcnn_msvmamba_n_tiny_coco.py`` (the paper's
   ``configs/mask_rcnn_msvmamba_n_1x.py`` on that data) with ``tools/train.py``, which
   also saves the untrained, initialised weights as ``iter_0.pth``;
3. evaluate the untrained and the trained checkpoint with ``tools/test.py`` (COCO bbox /
   segm mAP tables), drawing the trained model's predictions next to the ground truth
   (``--show-dir``);
4. plot the training loss and validation mAP (``tools/analysis_tools/analyze_logs.py``);
5. print where everything went (also in ``<work-dir>/quick_start_summary.json``).

``OMP_NUM_THREADS`` (threads per process) defaults to half the CPU cores, at most 4.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'quick_start', 'mask_rcnn_msvmamba_n_tiny_coco.py')
DEFAULT_ITERS = 60
# what the config expects under --data-dir (its data_root is data/quick_start/tiny_coco/)
DATA = dict(num_train=48, num_val=12, size=(128, 128), radius=(0.15, 0.3))
METRIC_RE = re.compile(r'coco/((?:bbox|segm)_mAP(?:_50)?): (-?[0-9.]+)')
# what mmdet's CocoMetric logs (and then reports no metric) when nothing was detected
EMPTY_RESULTS = 'The testing results of the whole dataset is empty'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/quick_start.py',
        description='Train, test and visualise Mask R-CNN + MSVMamba-Nano on a tiny '
        'drawn-shapes COCO dataset, end to end on a CPU (or GPU).')
    parser.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                        help=f'training iterations of 4 images (default {DEFAULT_ITERS}; '
                        'the whole run takes about 10 minutes on 2 busy CPU cores)')
    parser.add_argument('--work-dir', default='work_dirs/quick_start',
                        help='where checkpoints, logs, drawings and the curve go')
    parser.add_argument('--data-dir', default='data/quick_start',
                        help='parent folder of the tiny dataset (tiny_coco/ inside)')
    parser.add_argument('--amp', action='store_true',
                        help='train with mixed precision (tools/train.py --amp: fp16 with '
                        'loss scaling on a GPU, bf16 autocast on a CPU)')
    parser.add_argument('--config', default=CONFIG, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error('--iters must be at least 1')
    return args


def _to_png(folder):
    """mmdet's visualization hook saves JPEGs named like the inputs: make them PNGs."""
    from PIL import Image
    for name in os.listdir(folder):
        stem, ext = osp.splitext(name)
        if ext.lower() in ('.jpg', '.jpeg'):
            Image.open(osp.join(folder, name)).save(osp.join(folder, stem + '.png'))
            os.remove(osp.join(folder, name))


def _table(before, after):
    return '\n'.join(f'  {name:<22}{before.get(name, -1):9.3f}  -> {after.get(name, -1):8.3f}'
                     for name in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50'))


class QuickStart:

    def __init__(self, args):
        self.args = args
        self.work_dir = osp.abspath(args.work_dir)
        self.data_root = osp.join(args.data_dir, 'tiny_coco')
        self.env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.env.setdefault('OMP_NUM_THREADS',
                            str(max(1, min(4, (os.cpu_count() or 2) // 2))))
        self.t0 = time.time()

    # ---------------------------------------------------------------------------------
    def _step(self, text):
        print(f'\n===== [{time.time() - self.t0:6.0f}s] {text}', flush=True)

    def _run(self, *cmd, capture=False):
        """Run a tool of this checkout (stdout shown live); its output when capture."""
        cmd = [sys.executable, *map(str, cmd)]
        print('$ ' + ' '.join(cmd[1:]), flush=True)
        proc = subprocess.Popen(cmd, cwd=os.getcwd(), env=self.env, text=True,
                                stdout=subprocess.PIPE if capture else None,
                                stderr=subprocess.STDOUT if capture else None)
        lines = []
        if capture:
            for line in proc.stdout:
                sys.stdout.write(line)
                lines.append(line)
        if proc.wait() != 0:
            sys.exit(f'quick start: {cmd[1]} failed (exit status {proc.returncode})')
        return ''.join(lines)

    def _data_options(self, *phases):
        """--cfg-options values that point the phases' data at --data-dir."""
        ann = f'{self.data_root}/annotations/instances_val2017.json'
        options = [f'{p}_dataloader.dataset.data_root={self.data_root}/' for p in phases]
        return options + [f'{p}_evaluator.ann_file={ann}' for p in phases if p != 'train']

    def _tool(self, name):
        return osp.join(REPO, 'tools', name)

    # ---------------------------------------------------------------------------------
    def make_data(self):
        ann = osp.join(self.data_root, 'annotations', 'instances_val2017.json')
        if osp.isfile(ann):
            self._step(f'1/5 tiny COCO dataset: {self.data_root} (already there)')
            return
        self._step(f'1/5 making the tiny COCO dataset in {self.data_root}')
        self._run(self._tool('dataset_converters/make_tiny_datasets.py'), 'coco',
                  '--out-dir', self.args.data_dir, '--num-train', DATA['num_train'],
                  '--num-val', DATA['num_val'], '--size', *DATA['size'],
                  '--radius', *DATA['radius'], '--class-colors')

    def train(self):
        n = self.args.iters
        self._step(f'2/5 training {n} iterations{" (--amp)" if self.args.amp else ""}: '
                   f'{self.args.config}')
        amp = ['--amp'] if self.args.amp else []
        self._run(self._tool('train.py'), self.args.config, '--work-dir', self.work_dir,
                  *amp, '--cfg-options', *self._data_options('train', 'val'),
                  f'train_cfg.max_iters={n}', f'train_cfg.val_interval={max(1, n // 2)}',
                  f'param_scheduler.1.end={n}', f'default_hooks.checkpoint.interval={n}')
        return osp.join(self.work_dir, 'iter_0.pth'), osp.join(self.work_dir,
                                                                f'iter_{n}.pth')

    def test(self, checkpoint, name, show_dir=None):
        self._step(f'3/5 evaluating the {name} model: {checkpoint}')
        extra = ['--show-dir', show_dir] if show_dir else []
        out = self._run(self._tool('test.py'), self.args.config, checkpoint,
                        '--work-dir', osp.join(self.work_dir, f'test_{name}'),
                        '--cfg-options', *self._data_options('test'), *extra,
                        capture=True)
        metrics = {name: float(v) for name, v in METRIC_RE.findall(out)}
        if not metrics and EMPTY_RESULTS in out:  # no detection at all: mAP 0
            metrics = dict(bbox_mAP=0.0, bbox_mAP_50=0.0, segm_mAP=0.0, segm_mAP_50=0.0)
        if not metrics:
            sys.exit(f'quick start: no COCO mAP in the output of tools/test.py ({name})')
        if show_dir:
            _to_png(show_dir)
        return metrics

    def plot(self):
        self._step('4/5 plotting the training curves')
        logs = sorted(glob.glob(osp.join(self.work_dir, '*', 'vis_data', 'scalars.json')))
        if not logs:
            sys.exit(f'quick start: no training log (*/vis_data/scalars.json) in '
                     f'{self.work_dir}')
        out = osp.join(self.work_dir, 'curves.png')
        with open(logs[-1]) as f:
            text = f.read()
        # the mAP is missing from the log while nothing was detected yet
        keys = ['loss'] + [k for k in ('coco/bbox_mAP', 'coco/segm_mAP') if k in text]
        self._run(self._tool('analysis_tools/analyze_logs.py'), 'plot_curve', logs[-1],
                  '--keys', *keys, '--out', out)
        return logs[-1], out

    def main(self):
        self.make_data()
        untrained_ckpt, trained_ckpt = self.train()
        show_dir = osp.join(self.work_dir, 'predictions')
        untrained = self.test(untrained_ckpt, 'untrained')
        trained = self.test(trained_ckpt, 'trained', show_dir=show_dir)
        log, curves = self.plot()
        summary = dict(
            config=self.args.config, iters=self.args.iters, data_root=self.data_root,
            work_dir=self.work_dir, amp=self.args.amp, checkpoint=trained_ckpt,
            untrained_checkpoint=untrained_ckpt, train_log=log, curves=curves,
            predictions=show_dir, untrained=untrained, trained=trained,
            seconds=round(time.time() - self.t0, 1))
        with open(osp.join(self.work_dir, 'quick_start_summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        self._step('5/5 done')
        print(f"""
COCO val mAP on {DATA['num_val']} images   untrained  ->  trained ({self.args.iters} iters)
{_table(untrained, trained)}

dataset:              {self.data_root}
trained checkpoint:   {trained_ckpt}
untrained checkpoint: {untrained_ckpt}
training log:         {log}
loss / mAP curves:    {curves}
predictions (gt | prediction, one PNG per val image): {show_dir}
summary:              {osp.join(self.work_dir, 'quick_start_summary.json')}
total time:           {summary['seconds']:.0f} s""", flush=True)
        return summary


def main(argv=None):
    QuickStart(parse_args(argv)).main()


if __name__ == '__main__':
    main()
