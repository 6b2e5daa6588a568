"""Runnable entry points.

python -m train --config configs/<name>.py --workdir DIR      fine-tune and report
python -m train.predict --model DIR --text "..."                classify texts or a file
python -m train.evaluate --model DIR --data NAME_OR_PATH        report on any data set
"""
