"""cinelab: deep learning on cardiac and chest imaging, from raw files to reports."""

import os as _os
import tempfile as _tempfile

__version__ = "0.1.0"

#: cinelab writes nothing outside --out and the weights cache: matplotlib's config/font cache
#: goes to a per-user temp folder unless MPLCONFIGDIR is set (set before matplotlib loads)
MPL_CONFIG_ENV = "MPLCONFIGDIR"
if not _os.environ.get(MPL_CONFIG_ENV):
    _os.environ[MPL_CONFIG_ENV] = _os.path.join(
        _tempfile.gettempdir(), f"cinelab-matplotlib-{getattr(_os, 'getuid', lambda: 0)()}")
