"""The toy model description the export tests share."""
from training import params

SIZE = (64, 128)
DATA = params.section("data")


def model_info(sha_byte: str) -> dict:
    """What load_deployable reports for a 5-class model; `sha_byte` makes each test file's hash distinct."""
    return {"classes": ["road", "car", "sky", "person", "tree"],
            "palette": [[128, 64, 128], [0, 0, 142], [70, 130, 180], [220, 20, 60], [107, 142, 35]],
            "mean": DATA.mean, "std": DATA.std, "dataset": "synthetic",
            "sha256": sha_byte * 32}
