"""`cinelab serve`: a DICOM node and HTTP service that runs the models on arriving studies.

- `config`: the YAML configuration, validated into typed fields (`load_config`)
- `queue`: the persistent job queue (SQLite, WAL): each accepted study processed once
- `arrival`: storing arriving DICOM instances and uploads (pseudonymised on arrival)
- `worker`: routing a study to its models (`cinelab.pipelines.registry`), the results
- `sr`, `seg`: DICOM Structured Report (TID 1500) and Segmentation of the results
- `node`: the DICOM Storage/Verification SCP and the C-STORE forwarder (pynetdicom)
- `api`, `page`, `metrics`: the HTTP API (FastAPI), review page and Prometheus metrics
- `service`: all of it wired together and run (`serve`)
"""
