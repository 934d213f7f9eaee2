"""``python -m nas_core.latency.runner BUNDLE_DIR --out lut.parquet`` (in a bundle: ``python run_bundle.py ...``)."""
import sys

from .cli import main

sys.exit(main())
