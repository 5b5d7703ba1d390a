"""The sfm stage: SIFT features, pair selection and matching, mapping (GLOMAP / incremental) with
self-calibration and retries, verification of the model, and its export."""
