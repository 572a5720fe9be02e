"""gan-rebalance: a DVC pipeline that rebalances an image dataset with a class-conditional GAN.

docs/ARCHITECTURE.md maps the stages (one module each) and the library beneath them.
"""

import os
import warnings

# Lightning 2.6 calls a torch API that torch 2.14 deprecates, once per fit: not ours to fix.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

# albumentations checks for updates over the network when imported unless this is set; set once,
# here, before any module of the package can import it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
