"""The experiment configs that ship with medjax: `medjax train --config NAME[:VARIANT]` from any directory.

Each module has a `get_config(arg=None)` returning an `ml_collections.ConfigDict`; a user's own config file can
import and extend one (`from medjax.configs import image_folder_unet`). `names()` lists them.
"""

from __future__ import annotations

import pkgutil


def names() -> list[str]:
    """The shipped config names, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
