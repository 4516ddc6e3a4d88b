import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, ROOT)
