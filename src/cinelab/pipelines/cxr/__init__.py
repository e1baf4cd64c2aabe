"""The cxr pipeline."""

from cinelab.pipelines.cxr.crop import prepare_cxr_sample
from cinelab.prep.prepare import register_preparer

register_preparer("cxr", prepare_cxr_sample)
