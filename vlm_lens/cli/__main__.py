"""`python -m vlm_lens.cli`: the `vlm-lens` console script without the installed entry point.

Not for: anything else (see `vlm_lens.cli`).
"""

import sys

from vlm_lens.cli import main

sys.exit(main())
