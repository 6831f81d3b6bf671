#!/bin/bash
# usage: ft.sh METHOD PARALLEL
cd /work/measure11c
export PYTHONPATH=/work/measure11c OMP_NUM_THREADS=1 WANDB_MODE=disabled
/usr/bin/time -v /work/main/.venv/bin/python -m audio_ssl.cli cv --config experiments/$1_finetune.yaml \
  --pipeline-set size=cpu --out /work/measure11-out/results --no-wandb --parallel $2 --threads-per-fold 1 \
  --set data.init_args.data_dir=/work/shared/data/esc50-16k --set trainer.enable_progress_bar=false \
  > /work/measure11-out/ft_$1.log 2>&1
echo "exit $?" >> /work/measure11-out/ft_$1.log
