import sys

from threestudio_like.sweep.cli import main

sys.exit(main())
