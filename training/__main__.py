"""`python -m training ...`: the original's main.py command line."""
import sys

from .cli import main

sys.exit(main())
