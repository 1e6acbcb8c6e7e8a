#!/usr/bin/env bash
# Rebuild notebooks from their .py sources and execute them under the smoke profile, storing the
# outputs that nbval checks. The .py file is the source of truth (never `jupytext --sync`).
#   notebooks/refresh.sh                 # all notebooks, in order
#   notebooks/refresh.sh 03_training.py  # one (the earlier ones' checkpoints must exist)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DIFFUSION_PROFILE=smoke MPLBACKEND=module://matplotlib_inline.backend_inline
for py in "${@:-[0-9][0-9]_*.py}"; do
  for f in $py; do
    jupytext --quiet --update --to ipynb "$f"
    jupyter nbconvert --to notebook --execute --inplace --log-level=WARN \
      --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.store_widget_state=False "${f%.py}.ipynb"
    echo "executed ${f%.py}.ipynb ($(du -k "${f%.py}.ipynb" | cut -f1) KiB)"
  done
done
