"""Privacy: DICOM de-identification (`medjax.privacy.deid`, `medjax deid`) for data that leaves the hospital."""
