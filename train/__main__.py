"""``python -m edgekit.train PRESET [options]``: the train command, for torchrun launches."""
import sys

from edgekit.cli import main

sys.argv = ["edgekit", "train", *sys.argv[1:]]
main()
