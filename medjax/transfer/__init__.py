"""PyTorch -> medjax weight import (and export back): file readers, name tables per layout, conversion rules."""

from medjax.transfer.convert import ImportReport, Rule, export_weights, import_weights
from medjax.transfer.io import read_state_dict, write_state_dict
from medjax.transfer.layouts import LAYOUTS, get_layout

__all__ = ["ImportReport", "Rule", "export_weights", "import_weights", "read_state_dict", "write_state_dict",
           "LAYOUTS", "get_layout"]
