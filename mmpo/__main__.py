"""`python -m mmpo ...` and `accelerate launch -m mmpo train ...` run the CLI."""

import sys

from mmpo.cli import main

sys.exit(main())
