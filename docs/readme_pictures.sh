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

run python block_main.py --structure 1 --quick --models_dir $M --plot_dir $P
run python minority_l_main.py --ka 5 --quick --models_dir $M --plot_dir $P
run python minority_n_main.py --ka 3 --quick --models_dir $M --plot_dir $P
run python limit_main.py --quick --models_dir $M --plot_dir $P
run python mixup_main.py --quick --models_dir $M --plot_dir $P
run python mixup_main.py --quick --loss mse --models_dir $M --plot_dir $P
run python opt_main.py --cluster_s 5 5 --sample_s 500 100 --lam 0.003 \
    --name readme_opt_main --out_dir $P --plot_dir $P

for fig in block_synthetic_mlp_linear_s1 minority_l_synthetic_mlp_linear_ka5 minority_n_synthetic_mlp_linear_ka3 \
           limit_synthetic_mlp_linear_ka5; do
    run python utils.py replot-figure $P/${fig}_quick.json --out docs/img/${fig%%_synthetic*}_quick.png
done
run python utils.py replot-figure $P/readme_opt_main.json --out docs/img/opt_main.png
CE=$(ls -d $M/mixup_digits_mlp_cross_entropy_*/) MSE=$(ls -d $M/mixup_digits_mlp_mse_*/)
run python utils.py mixup-grid "$CE" --dpi 80 --out docs/img/mixup_quick_grid.png
run python utils.py mixup-accuracy "$CE" "$MSE" --label loss --out docs/img/mixup_quick_accuracy.png
run python utils.py mixup-compare "$CE" "$MSE" --label loss --plot_dir $P   # prints the README's mixup table
cp $P/mixup_compare.png docs/img/mixup_quick_compare.png
run python utils.py mixup-ufm --loss cross_entropy --num_classes 10 --beta 0.01 --out docs/img/mixup_ufm_ce.png
run python utils.py mixup-ufm --loss mse --num_classes 10 --beta 0.01 --out docs/img/mixup_ufm_mse.png
run python mixup_main.py --study --quick --models_dir $M/study --plot_dir $P   # its own runs: CE/MSE above stay unique
cp $P/mixup_study_quick_projections.png $P/mixup_study_quick_dynamics.png docs/img/
