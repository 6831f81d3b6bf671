#!/bin/bash
cd /work/measure11c
export PYTHONPATH=/work/measure11c OMP_NUM_THREADS=1 WANDB_MODE=disabled
/usr/bin/time -v /work/main/.venv/bin/python -m audio_ssl.cli reproduce --rows mfcc_logreg --data-dir /work/shared/data/esc50-16k > /work/measure11-out/mfcc.log 2>&1
echo "exit $?" >> /work/measure11-out/mfcc.log
