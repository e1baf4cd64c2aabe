"""EchoNet-Dynamic: LV segmentation, EF regression, beat-by-beat EF (Ouyang et al. 2020)."""

from cinelab.formats.ingest import Layout, register_layout
from cinelab.pipelines.echonet import seg_video, tasks  # noqa: F401  (register model, task)
from cinelab.pipelines.echonet.layout import ingest_echonet, is_echonet

register_layout(Layout("echonet", is_echonet, ingest_echonet,
                       "EchoNet-Dynamic: FileList.csv, VolumeTracings.csv, Videos/",
                       label_ranges={"EF": (0.0, 100.0)}))
