"""Pipeline task setups: each module registers its setup with `register_task_setup`.

`build_task` imports this package, which imports every module in it: a new trainable task
(its datasets, LightningModule and input spec) is one new file here.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
