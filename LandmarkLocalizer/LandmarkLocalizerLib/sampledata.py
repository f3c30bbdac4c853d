"""Try it in one click: the MNI152 T1 template as Slicer sample data, with the shipped one-shot support template.

The image is the MNI152 (ICBM 2009a symmetric) T1 template inside the nilearn
wheel, as ``landmarkloc demo`` uses it: nothing is downloaded once nilearn is
installed. The support template ``brain-t1-rpr-mni152-support`` (16 brain
points, encoded with the shipped RPR models) was made on this image, so after
loading the sample the user can click Localize (Landmark Localizer) and Find
(RPR One-Shot) without any data of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landmarkloc.demo import FCN_MODEL, MNI_IN_NILEARN, RPR_MODELS, SUPPORT_TEMPLATE
from landmarkloc.errors import InputError
from landmarkloc.io.modelfile import models_folder

SAMPLE_CATEGORY = "Landmark Localization"
SAMPLE_NAME = "MNI152 T1"
NODE_NAME = "MNI152_T1"
FILE_NAME = Path(MNI_IN_NILEARN).name
SOURCE_URI = f"https://github.com/nilearn/nilearn/raw/main/nilearn/{MNI_IN_NILEARN}"  # where nilearn keeps it
THUMBNAIL = "MNI152Sample.png"  # in LandmarkLocalizer/Resources/Icons


@dataclass(frozen=True)
class SampleModels:
    """The shipped files (metadata paths) the modules use on the sample, as ``landmarkloc demo`` does."""

    fcn: str  # Landmark Localizer's model
    coarse: str  # RPR One-Shot's models ...
    fine: str
    template: str  # ... and the support template made with them on this image


def mni152_file() -> Path:
    """The template image file (in the nilearn package); InputError when nilearn is not installed."""
    from landmarkloc.demo import mni_template_path

    return mni_template_path()


def sample_models() -> SampleModels:
    """The shipped models and support template for the sample; InputError when one is missing."""
    paths = []
    for name in (FCN_MODEL, *RPR_MODELS, SUPPORT_TEMPLATE):
        path = models_folder() / f"{name}.json"
        if not path.is_file():
            raise InputError(f"{path.name} is missing from {path.parent}; the sample needs the shipped models")
        paths.append(str(path))
    return SampleModels(*paths)


def load_mni152(scene, name: str = NODE_NAME):
    """The MNI152 T1 template as a volume node of ``scene`` (its file geometry, in world coordinates)."""
    from landmarkloc.io.image import read_image

    from . import mrml

    node = mrml.image_to_volume(scene, read_image(mni152_file()), name)
    node.CreateDefaultDisplayNodes()
    return node
