#!/bin/bash
cd /work/measure11
export PYTHONPATH=/work/measure11 OMP_NUM_THREADS=1 WANDB_MODE=disabled
/usr/bin/time -v /work/main/.venv/bin/python -m audio_ssl.cli cv --config experiments/masked_cnn_probe.yaml \
  --pipeline-set size=cpu --pipeline-set transductive=true --out /work/measure11-out/results --no-wandb \
  --name masked_cnn_probe_cpu_transductive_mask04 \
  --set data.init_args.data_dir=/work/shared/data/esc50-16k \
  --set model.init_args.mask_ratio=0.4 \
  > /work/measure11-out/masked_m04.log 2>&1
echo "exit $?" >> /work/measure11-out/masked_m04.log
