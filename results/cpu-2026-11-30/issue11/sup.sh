#!/bin/bash
cd /work/measure11b
export PYTHONPATH=/work/measure11b OMP_NUM_THREADS=1 WANDB_MODE=disabled
/usr/bin/time -v /work/main/.venv/bin/python -m audio_ssl.cli cv --config experiments/supervised_cpu.yaml \
  --out /work/measure11-out/results --no-wandb --set data.init_args.data_dir=/work/shared/data/esc50-16k \
  --set trainer.enable_progress_bar=false > /work/measure11-out/sup.log 2>&1
echo "exit $?" >> /work/measure11-out/sup.log
for v in 10; do
/work/main/.venv/bin/python benchmarks/gpu/tta_eval.py --run-dir /work/measure11-out/results/supervised_cpu --tta-views $v --tta augment > /work/measure11-out/tta_augment$v.log 2>&1
echo "exit $?" >> /work/measure11-out/tta_augment$v.log
done
/work/main/.venv/bin/python benchmarks/gpu/tta_eval.py --run-dir /work/measure11-out/results/supervised_cpu --tta-views 10 --tta shift --name supervised_cpu_tta10_shift > /work/measure11-out/tta_shift10.log 2>&1
echo "exit $?" >> /work/measure11-out/tta_shift10.log
