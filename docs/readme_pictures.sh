#!/usr/bin/env bash
# Regenerate every picture of the README (docs/img/*.png) with the commands the README documents:
#     bash docs/readme_pictures.sh          (finished runs are reused)
# Runs go to models/readme/ and plots/readme/ (git-ignored), so other runs never mix in; the
# pictures are then redrawn from the saved results into docs/img/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
M=models/readme P=plots/readme
run() { echo "+ $*" >&2; "$@"; }
# the JSON a figure command printed (its stem depends on the runs it holds: docs/figure_runs.md)
figure() { run python "$@" --quick --models_dir $M --plot_dir $P | grep '\.json$'; }

BLOCK=$(figure block_main.py --structure 1)
MINORITY_L=$(figure minority_l_main.py --ka 5)
MINORITY_N=$(figure minority_n_main.py --ka 3)
LIMIT=$(figure limit_main.py)
run python mixup_main.py --quick --models_dir $M --plot_dir $P
run python mixup_main.py --quick --loss mse --models_dir $M --plot_dir $P
run python opt_main.py --cluster_s 5 5 --sample_s 500 100 --lam 0.003 \
    --name readme_opt_main --out_dir $P --plot_dir $P

for fig in "$BLOCK block" "$MINORITY_L minority_l" "$MINORITY_N minority_n" "$LIMIT limit"; do
    set -- $fig
    run python utils.py replot-figure "$1" --out "docs/img/$2_quick.png"
done
run python utils.py replot-figure $P/readme_opt_main.json --out docs/img/opt_main.png
CE=$(ls -d $M/mixup_digits_mlp_cross_entropy_*/) MSE=$(ls -d $M/mixup_digits_mlp_mse_*/)
run python utils.py mixup-grid "$CE" --dpi 80 --out docs/img/mixup_quick_grid.png
run python utils.py mixup-accuracy "$CE" "$MSE" --label loss --out docs/img/mixup_quick_accuracy.png
run python utils.py mixup-compare "$CE" "$MSE" --label loss --plot_dir $P   # prints the README's mixup table
cp $P/mixup_compare.png docs/img/mixup_quick_compare.png
run python utils.py mixup-ufm --loss cross_entropy --num_classes 10 --beta 0.01 --out docs/img/mixup_ufm_ce.png
run python utils.py mixup-ufm --loss mse --num_classes 10 --beta 0.01 --out docs/img/mixup_ufm_mse.png
STUDY=$(run python mixup_main.py --study --quick --models_dir $M/study --plot_dir $P | grep '\.json$')  # its own runs
cp "${STUDY%.json}_projections.png" "${STUDY%.json}_dynamics.png" docs/img/
