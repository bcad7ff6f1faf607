#!/usr/bin/env bash
# The MNIST table of Salimans et al. 2016 in one command: the three sweeps of
# experiment=salimans_mnist_table in turn (conf/experiment/salimans_mnist_table.yaml), each with
# ckpt_path=last, so running this again continues every unfinished run in its own directory
# and only re-tests the finished ones. Arguments go to every sweep, after the script's own
# (a key given here replaces the script's), e.g.
#   experiments/salimans_2016/run_table.sh paths.data_dir=../shared/data
#   experiments/salimans_2016/run_table.sh trainer=gpu trainer.precision=bf16-mixed threads=null
# Then: gendisc-report --table experiments/salimans_2016/table.yaml outputs/salimans_mnist_table
set -euo pipefail
train=(gendisc-train -m experiment=salimans_mnist_table ckpt_path=last)
# 20, 50, 100 and 200 labels, data seeds 0-2 (12 runs)
"${train[@]}" "$@"
# 100 labels: data seeds 3 and 4 (5 in all)
"${train[@]}" data.labels_per_class=10 data.data_seed=3,4 "$@"
# the same D trained on the labels only, 100 labels, data seeds 0-2
"${train[@]}" data.labels_per_class=10 ablation=no_unlabeled "$@"
