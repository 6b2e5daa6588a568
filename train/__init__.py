"""Runnable entry points: `python -m train --config configs/<name>.py --workdir DIR`."""
