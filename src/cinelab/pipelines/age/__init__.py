"""The age pipeline."""

from cinelab.pipelines.age.prepare import prepare_cine_sample
from cinelab.prep.prepare import register_preparer

register_preparer("cine", prepare_cine_sample)
