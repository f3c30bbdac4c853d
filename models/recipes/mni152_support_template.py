"""Make the demo's one-shot support template on the MNI152 T1 template (nilearn's copy).

Support points: the 16 IXI-16 landmarks as brain-t1-ixi16 places them on the
template (checked visually in the overview figure) - the role a user's clicks
play. The template stores the RPR models' latent vectors of those points, so it
must be remade whenever the RPR models change. Writes
models/brain-t1-rpr-mni152-support.{safetensors,json,mrk.json}.

    python models/recipes/mni152_support_template.py
"""

from __future__ import annotations

from landmarkloc.demo import FCN_MODEL, RPR_MODELS, SUPPORT_TEMPLATE, mni_template_path
from landmarkloc.inference.fcn import Localizer
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import write_points
from landmarkloc.io.modelfile import models_folder, shipped_model


def main() -> None:
    image = read_image(mni_template_path())
    points = Localizer.from_file(shipped_model(FCN_MODEL), device="cpu").localize(image).points
    locator = OneShotLocator.from_files(shipped_model(RPR_MODELS[0]), shipped_model(RPR_MODELS[1]), device="cpu")
    template = locator.make_template(image, points)
    template.save(models_folder() / SUPPORT_TEMPLATE)
    write_points(models_folder() / f"{SUPPORT_TEMPLATE}.mrk.json", points)
    print(f"support template with {len(points)} points -> {models_folder() / SUPPORT_TEMPLATE}.safetensors")


if __name__ == "__main__":
    main()
