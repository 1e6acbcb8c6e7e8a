#!/usr/bin/env bash
# Rebuild notebooks from their .py sources and execute them, storing the outputs a reader sees
# and nbval checks. The committed outputs come from the laptop profile; CI runs every notebook
# under smoke and compares only cells marked NBVAL_CHECK_OUTPUT, which print profile-independent
# values. The .py file is the source of truth (never `jupytext --sync`).
#   notebooks/refresh.sh                              # all notebooks, in order, under laptop
#   notebooks/refresh.sh 03_training.py               # one (earlier checkpoints must exist, or pretrained/)
#   DIFFUSION_PROFILE=smoke notebooks/refresh.sh      # another profile
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DIFFUSION_PROFILE="${DIFFUSION_PROFILE:-laptop}" MPLBACKEND=module://matplotlib_inline.backend_inline
for py in "${@:-[0-9][0-9]_*.py}"; do
  for f in $py; do
    start=$(date +%s)
    jupytext --quiet --update --to ipynb "$f"
    jupyter nbconvert --to notebook --execute --inplace --log-level=WARN \
      --ExecutePreprocessor.timeout=3600 --ExecutePreprocessor.store_widget_state=False "${f%.py}.ipynb"
    echo "executed ${f%.py}.ipynb under $DIFFUSION_PROFILE in $(( $(date +%s) - start )) s ($(du -k "${f%.py}.ipynb" | cut -f1) KiB)"
  done
done
