#!/usr/bin/env python
"""threestudio_like's entry point, e.g.

    python launch.py --config configs/sds-nerf.yaml --train system.prompt_processor.prompt="a red ball on a blue box"
"""
import sys

from threestudio_like.cli import main

if __name__ == "__main__":
    sys.exit(main())
