"""The cmr pipeline."""

from cinelab.pipelines.cmr.prepare import prepare_cmr_sample
from cinelab.prep.prepare import register_preparer

register_preparer("cmr", prepare_cmr_sample)
