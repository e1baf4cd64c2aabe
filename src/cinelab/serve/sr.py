"""DICOM Structured Report of a study's results: highdicom Comprehensive 3D SR, TID 1500.

One measurement group per (model, predicted sample), tracked by ``<model>:<sample_id>`` and
referencing its source instance (a DICOM input's sample id is its SOPInstanceUID); each
numeric contract column with a code below becomes one measurement, intervals
(``<output>_lo``/``_hi``) included, so every value read back equals predictions.csv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cinelab.utils import atomic_path

PRIVATE = "99CINELAB"
SR_SERIES_NUMBER, SEG_SERIES_NUMBER = 9001, 9002
MANUFACTURER = "cinelab"
#: contract column -> (code value, scheme, meaning), (UCUM unit, meaning)
MEASURES: dict[str, tuple[tuple[str, str, str], tuple[str, str]]] = {
    "ef": (("10230-1", "LN", "Left ventricular Ejection fraction"), ("%", "percent")),
    "edv": (("18026-5", "LN", "Left ventricular end diastolic volume"), ("ml", "milliliter")),
    "esv": (("18148-7", "LN", "Left ventricular end systolic volume"), ("ml", "milliliter")),
    "lv_mass": (("18087-5", "LN", "Left ventricular Mass"), ("g", "gram")),
    "rv_ef": (("RVEF", PRIVATE, "Right ventricular ejection fraction"), ("%", "percent")),
    "age": (("AGE_EST", PRIVATE, "Age estimated from imaging"), ("a", "year")),
    "probability": (("PROB", PRIVATE, "Probability of the positive finding"),
                    ("1", "no units")),
}
PROCEDURE = hd.sr.CodedConcept("IMAGING", PRIVATE, "Imaging procedure")
BOUNDS = {"_lo": "lower interval bound", "_hi": "upper interval bound"}


def measure_columns(table: pd.DataFrame) -> list[str]:
    """The contract columns of `table` that become SR measurements, in a stable order."""
    out = []
    for base in MEASURES:
        out += [c for c in (base, base + "_lo", base + "_hi") if c in table.columns]
    return out


def _concept(column: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """(name, unit) codes of one column; interval bounds get a private code of their own."""
    base = column.removesuffix("_lo").removesuffix("_hi")
    (value, scheme, meaning), (unit, unit_meaning) = MEASURES[base]
    if base != column:
        suffix = column[len(base):]
        value, scheme, meaning = f"{value}{suffix.upper()}", PRIVATE, \
            f"{meaning} {BOUNDS[suffix]}"
    return (hd.sr.CodedConcept(value, scheme, meaning),
            hd.sr.CodedConcept(unit, "UCUM", unit_meaning))


def _measurements(row: Mapping[str, Any], columns: Sequence[str],
                  source: Dataset | None) -> list[hd.sr.Measurement]:
    refs = None if source is None else [hd.sr.SourceImageForMeasurement.from_source_image(
        source)]
    out = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, int | float) and not isinstance(value, bool) and \
                math.isfinite(float(value)):
            name, unit = _concept(column)
            out.append(hd.sr.Measurement(name=name, value=float(value), unit=unit,
                                         referenced_images=refs))
    return out


def measurement_groups(results: Mapping[str, pd.DataFrame], sources: Mapping[str, Dataset]
                       ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group per (model, sample) with at least one finite measurement."""
    groups = []
    for model, table in results.items():
        columns = measure_columns(table)
        for row in table.to_dict("records"):
            sid = str(row["sample_id"])
            items = _measurements(row, columns, sources.get(sid))
            if items:
                tracking = hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                    identifier=f"{model}:{sid}")
                groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, measurements=items))
    return groups


def write_sr(path: str | Path, results: Mapping[str, pd.DataFrame],
             sources: Mapping[str, Dataset]) -> Path | None:
    """The SR of `results` (model -> predictions table) over `sources` (SOPInstanceUID ->
    header of the source instance, all of one study); None when nothing is measured."""
    groups = measurement_groups(results, sources)
    if not groups or not sources:
        return None
    evidence = list(sources.values())
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(),
                                                       name="cinelab serve")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=PROCEDURE,
                                     imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=report[0],
                                 series_instance_uid=generate_uid(),
                                 series_number=SR_SERIES_NUMBER,
                                 sop_instance_uid=generate_uid(), instance_number=1,
                                 manufacturer=MANUFACTURER, is_complete=True)
    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return Path(path)


def read_sr_measurements(path: str | Path) -> dict[str, dict[str, float]]:
    """``{"<model>:<sample>": {code meaning: value}}`` of an SR written by `write_sr`."""
    sr = hd.sr.srread(str(path))
    out: dict[str, dict[str, float]] = {}
    for group in sr.content.get_image_measurement_groups():
        key = str(group.tracking_identifier)
        out[key] = {m.name.meaning: float(m.value) for m in group.get_measurements()}
    return out
