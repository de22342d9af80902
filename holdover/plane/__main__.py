"""``python -m holdover.plane LISTEN_FDS CHANNEL_FD INDEX``: started by the control process."""

import sys

from .process import main

sys.exit(main(sys.argv[1:]))
