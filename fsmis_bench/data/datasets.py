"""Dataset specifications: on-disk layout, label ids and the shared organ vocabulary (protocol §1)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fsmis_bench.errors import ConfigError

#: The four benchmark organs, in the column order of every table.
ORGANS: tuple[str, ...] = ("liver", "spleen", "kidney_left", "kidney_right")

#: Organ groups of setting 2 (protocol §4.2).
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "upper": ("liver", "spleen"),
    "lower": ("kidney_left", "kidney_right"),
}

SYNAPSE_LABEL_NAMES: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_splenic_vein",
    11: "pancreas",
    12: "adrenal_right",
    13: "adrenal_left",
}
CHAOS_LABEL_NAMES: dict[int, str] = {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "spleen"}
CHAOS_PATIENT_IDS: tuple[int, ...] = (
    1,
    2,
    3,
    5,
    8,
    10,
    13,
    15,
    19,
    20,
    21,
    22,
    31,
    32,
    33,
    34,
    36,
    37,
    38,
    39,
)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline needs to know about one dataset, independent of where it lives.

    ``label_names`` maps every label id that may occur in a label volume to a name; ids outside it are an
    error. ``scan_ids`` lists the expected scans (the fold tables are defined over them).
    """

    name: str
    modality: str  # "ct" or "mri"
    layout: str  # folder of the SSL-ALPNet layout, e.g. "CHAOST2/chaos_MR_T2_normalized"
    label_names: dict[int, str]
    scan_ids: tuple[int, ...]
    #: Load-time normalisation of the alpnet lineage (protocol §1.6): "volume_zscore" or "fold_zscore".
    default_normalisation: str
    #: Crop every slice to its first 256 rows/columns at load time (protocol §1.3, CT only).
    crop_256: bool = False
    #: Intensity above which a pixel belongs to the body, for the superpixel body mask (protocol §2.1).
    body_threshold: float = 1e-4
    synthetic: bool = False
    description: str = ""
    reference_data_hint: str = ""

    @property
    def organ_label(self) -> dict[str, int]:
        """Benchmark organ name -> label id in this dataset."""
        by_name = {name: label for label, name in self.label_names.items()}
        return {organ: by_name[organ] for organ in ORGANS}

    def group_labels(self, group: str) -> tuple[int, ...]:
        """Label ids of a setting-2 label group."""
        return tuple(self.organ_label[o] for o in LABEL_GROUPS[group])

    @property
    def folder_name(self) -> str:
        return self.layout.rsplit("/", 1)[-1]


ABD_CT = DatasetSpec(
    name="abd_ct",
    modality="ct",
    layout="SABS/sabs_CT_normalized",
    label_names=SYNAPSE_LABEL_NAMES,
    scan_ids=tuple(range(30)),
    default_normalisation="fold_zscore",
    crop_256=True,
    body_threshold=1e-4,
    description="Synapse/BTCV multi-atlas abdomen CT, 30 labelled scans (SSL-ALPNet preprocessing)",
    reference_data_hint="<root>/SABS/sabs_CT_normalized (see README: Data)",
)
ABD_MRI = DatasetSpec(
    name="abd_mri",
    modality="mri",
    layout="CHAOST2/chaos_MR_T2_normalized",
    label_names=CHAOS_LABEL_NAMES,
    scan_ids=CHAOS_PATIENT_IDS,
    default_normalisation="volume_zscore",
    body_threshold=50 + 1e-4,
    description="CHAOS T2-SPIR MRI, 20 labelled patients (SSL-ALPNet preprocessing)",
    reference_data_hint="<root>/CHAOST2/chaos_MR_T2_normalized",
)
#: The synthetic datasets mirror their real counterparts (layout, label ids, scans, normalisation, body mask), so
#: every pipeline path a real run takes is exercised without a download.
SYNTHETIC_CT = replace(
    ABD_CT,
    name="synthetic_ct",
    synthetic=True,
    description="seeded CT-like abdominal phantoms in the abd_ct layout and label ids (no download)",
    reference_data_hint="",
)
SYNTHETIC_MRI = replace(
    ABD_MRI,
    name="synthetic_mri",
    synthetic=True,
    description="seeded T2-SPIR-like abdominal phantoms in the abd_mri layout and label ids (no download)",
    reference_data_hint="",
)

DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (SYNTHETIC_MRI, SYNTHETIC_CT, ABD_MRI, ABD_CT)}


def get_dataset(name: str) -> DatasetSpec:
    """Look a dataset up by name, with an error that lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}") from None
