"""`make bench`: every benchmark, one after the other (results in bench/results/)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for script in ("train_bench.py", "convert_bench.py", "infer_bench.py", "profile_batch.py", "scaling_bench.py"):
    print(f"=== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
