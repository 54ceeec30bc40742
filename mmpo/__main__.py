"""`python -m mmpo ...` and `accelerate launch -m mmpo train ...` run the CLI."""

import sys

from mmpo.app.cli import main

sys.exit(main())
