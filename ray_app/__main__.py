"""``python -m ray_app``: the command the image's /usr/bin/start.sh runs."""

import sys

from ray_app.cli import main

sys.exit(main())
