"""`python -m reference_trainer` (also `torchrun -m reference_trainer`): see launch.py."""

import sys

from reference_trainer.launch import main

sys.exit(main())
