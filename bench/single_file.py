"""Peak RSS of `ckptsync push` on one large file, and on a tenth of it (target: <= 200 MB, unchanged).

Usage: bash bench/run.sh --single-only [--single-size 4G] [--keep-single]
   or: bench/.venv/bin/python bench/single_file.py [--single-size 4G] [--keep-single]

Writes a safetensors file of fp32 weight-like values (N(0, 0.02)) of the given size
and one of a tenth of it under bench/out/single/, pushes each alone into a fresh
bucket of a local `rclone serve s3` (127.0.0.1) with ckptsync and, for
reference, aws s3 sync, and prints each client's peak RSS (ru_maxrss of its
process tree). The full run (bench/run.sh without --skip-single) does the same
and puts the figures into docs/BENCHMARKS.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runner  # noqa: E402

if __name__ == "__main__":
    if "--single-only" not in sys.argv:
        sys.argv.append("--single-only")
    sys.exit(runner.main())
