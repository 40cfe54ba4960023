"""Runs one fine-tuning job in its own process for the resume and DDP tests.

usage: python finetune_worker.py CONFIG.yaml OUTPUT [--kill-at N] [--pause-at N] [--dump DIR] [--resume]
       [--threads N]

--kill-at N  the process sends itself SIGTERM right after optimizer update N (a real signal, handled
             by the trainer's preemption handler); the exit status is then 128 + 15.
--pause-at N right after optimizer update N (rank 0) prints "paused" and waits for a line on stdin: the
             run is then in the middle of writing its output folder.
--dump DIR   after training, every rank saves its final model state to DIR/rank<r>.pt.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument('config')
    p.add_argument('output')
    p.add_argument('--kill-at', type=int, default=None)
    p.add_argument('--pause-at', type=int, default=None)
    p.add_argument('--dump', default=None)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from timm_asap_lab.config import load_config
    from timm_asap_lab.train import TrainingInterrupted, finetune

    models = []

    def on_update(state):
        if not models:
            models.append(state.model)
        if args.kill_at is not None and state.num_updates == args.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if args.pause_at is not None and state.num_updates == args.pause_at and state.rank == 0:
            print('paused', flush=True)
            sys.stdin.readline()

    try:
        finetune(load_config(args.config), args.output, resume=True if args.resume else None, device='cpu',
                 progress=False, callbacks=[on_update])
    except TrainingInterrupted as e:
        return 128 + e.signum
    if args.dump:
        rank = int(os.environ.get('RANK', '0'))
        os.makedirs(args.dump, exist_ok=True)
        torch.save({k: v.clone() for k, v in models[0].state_dict().items()}, os.path.join(args.dump, f'rank{rank}.pt'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
