#!/bin/bash
# BYOL-A then SimCLR CPU 5-fold pretrain-then-probe, same session, same machine.
cd /work/measure3/src
export PYTHONPATH=/work/measure3/src OMP_NUM_THREADS=1 WANDB_MODE=disabled
for m in byola simclr; do
  /usr/bin/time -v .venv/bin/audio-ssl cv --config experiments/${m}_probe_cpu.yaml --name ${m}_probe_cpu \
    --out /work/measure3/results --no-wandb --set data.init_args.data_dir=/work/shared/data/esc50-16k \
    > /work/measure3/${m}.log 2>&1
done
