import sys

from vlm_lens.cli import main

sys.exit(main())
