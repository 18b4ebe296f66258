"""fsmis-bench: few-shot medical image segmentation benchmark on abdominal CT and MRI."""

__version__ = "0.1.0"
