"""Render a figure with Slicer's own slice view: a volume, the localized landmarks and organ boxes.

No Qt and no Slicer application: the ``slicer-core`` package holds Slicer's
slice-view pipeline, and VTK renders it offscreen (EGL or OSMesa). The scene
gets the application logic with the Colors (default colour tables: the grey
background), Volumes and Markups logics; a ``vtkMRMLSliceLogic`` makes the Red
slice view's resliced image, shown by a ``vtkImageActor``; the markups
displayable manager (the one Slicer's slice views use) draws the point lists
and ROIs with Slicer's glyphs, labels and box outlines. Points and boxes are
loaded the way the modules load them (``LandmarkLocalizerLib.mrml``), so the
figure shows what a user sees in Slicer. Example::

    landmarkloc localize --model models/brain-t1-ixi16.json -o mni152.mrk.json mni152.nii.gz
    python scripts/render_slicer_figure.py --image mni152.nii.gz --points mni152.mrk.json \\
        --size 420 420 --field-of-view 150 -o docs/figures/slicer_localization.png

Without ``--points`` it shows the image alone (the Sample Data thumbnail).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "LandmarkLocalizer"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

BOX_COLOR = (0.31, 0.76, 0.97)  # organ boxes: light blue, apart from the points' colours
DEFAULT_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
SEPARATOR_PX = 4


class OffscreenUnavailable(RuntimeError):
    """VTK has no offscreen rendering here (no EGL/OSMesa), or slicer-core is missing."""


def scene_with_slicer_logics():
    """A scene with the logics Slicer's slice views rely on: application, Colors, Volumes, Markups."""
    try:
        import slicer
        import vtk
    except ImportError as exc:
        raise OffscreenUnavailable(f"slicer-core is not installed ({exc})") from None

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    # Colors: the default tables (Grey for volumes). No colour files to load from an (empty) home folder.
    home = tempfile.mkdtemp(prefix="landmarkloc-slicer-home-")
    app.SetHomeDirectory(home)
    app.SetShareDirectory("share")
    Path(home, "share", "ColorFiles").mkdir(parents=True)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app)
    volumes.SetMRMLScene(scene)
    markups = slicer.vtkSlicerMarkupsLogic()
    markups.SetMRMLApplicationLogic(app)
    markups.SetMRMLScene(scene)
    for name, logic in (("Colors", colors), ("Volumes", volumes), ("Markups", markups)):
        app.SetModuleLogic(name, logic)
    scene._landmarkloc_logics = (app, colors, volumes, markups)  # alive as long as the scene
    scene._landmarkloc_slice_logics = vtk.vtkCollection()
    slicer.mrmlScene = scene
    return scene


class SliceView:
    """Slicer's Red slice view, offscreen: ``show`` a volume, ``xy_of`` a world point, ``render`` to RGB pixels."""

    def __init__(self, scene, size=(600, 600), name: str = "Red", orientation: str = None):
        import slicer
        import vtk

        self.scene = scene
        self.width, self.height = int(size[0]), int(size[1])
        app = scene._landmarkloc_logics[0]
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddSliceNode(name)
        scene._landmarkloc_slice_logics.AddItem(self.logic)
        app.SetSliceLogics(scene._landmarkloc_slice_logics)
        self.node.SetOrientation(orientation or DEFAULT_ORIENTATIONS[name])
        self.node.SetDimensions(self.width, self.height, 1)

        self.window = vtk.vtkRenderWindow()  # VTK's factory: EGL or OSMesa when there is no display
        self.window.SetOffScreenRendering(1)
        kind = self.window.GetClassName()
        if kind == "vtkXOpenGLRenderWindow" and not os.environ.get("DISPLAY"):
            raise OffscreenUnavailable("this VTK has neither EGL nor OSMesa, and there is no X display")
        self.window.SetSize(self.width, self.height)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkGenericRenderWindowInteractor()  # the displayable managers expect one
        self.interactor.SetRenderWindow(self.window)
        self.image = vtk.vtkImageActor()  # shows the slice logic's resliced image once a volume is shown
        self.renderer.AddActor(self.image)
        # world coordinates = the slice view's XY pixel coordinates, as in Slicer's slice views
        camera = self.renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        camera.SetFocalPoint(self.width / 2.0, self.height / 2.0, 0.0)
        camera.SetPosition(self.width / 2.0, self.height / 2.0, 100.0)
        camera.SetViewUp(0.0, 1.0, 0.0)
        camera.SetParallelScale(self.height / 2.0)
        self.renderer.ResetCameraClippingRange(-1e4, 1e4, -1e4, 1e4, -1e4, 1e4)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app)
        if not factory.IsDisplayableManagerRegistered("vtkMRMLMarkupsDisplayableManager"):
            factory.RegisterDisplayableManager("vtkMRMLMarkupsDisplayableManager")
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        if self.managers is None:
            raise OffscreenUnavailable("the slice-view displayable managers could not be created")
        self.managers.SetMRMLDisplayableNode(self.node)

    def show(self, volume_node, center_ras=None, field_of_view_mm=None) -> None:
        """The volume as background (fitted to the view); the slice through ``center_ras`` if given."""
        if volume_node.GetDisplayNode() is None:
            volume_node.CreateDefaultDisplayNodes()
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        self.image.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())
        self.logic.FitSliceToVolume(volume_node, self.width, self.height)
        if field_of_view_mm is not None:
            fov = self.node.GetFieldOfView()
            self.node.SetFieldOfView(field_of_view_mm * self.width / self.height, field_of_view_mm, fov[2])
        if center_ras is not None:
            self.node.JumpSliceByCentering(*[float(v) for v in center_ras])
        self.node.UpdateMatrices()

    def normal(self) -> np.ndarray:
        """The slice plane's normal in world RAS."""
        m = self.node.GetSliceToRAS()
        n = np.array([m.GetElement(r, 2) for r in range(3)])
        return n / np.linalg.norm(n)

    def xy_of(self, ras) -> np.ndarray:
        """The slice view's XY pixel coordinates (x right, y up) and slice distance of world point ``ras``."""
        m = self.node.GetXYToRAS()
        xy_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        return (np.linalg.inv(xy_to_ras) @ np.append(np.asarray(ras, dtype=float), 1.0))[:3]

    def close(self) -> None:
        """Release the managers, the OpenGL context and the factory's hold on this scene's application logic.

        A slice logic still reslicing a background volume when the interpreter exits crashes it (segmentation
        fault after the figure is written); the slice-view factory is a process-wide singleton that must not keep
        pointing at this scene's application logic either."""
        import slicer

        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(None)
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()
        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self) -> np.ndarray:
        """The view as an RGB array [row, column] with row 0 at the top, as in a PNG."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])



def save_png(pixels: np.ndarray, path) -> None:
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(path))


def plane_with_most_points(ras: np.ndarray, normal: np.ndarray, center: np.ndarray, within_mm: float = 1.5):
    """``center`` moved along ``normal`` onto the plane (through one of the points) that holds most points."""
    offsets = ras @ normal
    counts = [(np.abs(offsets - d) <= within_mm).sum() for d in offsets]
    best = offsets[int(np.argmax(counts))]
    return center + (best - center @ normal) * normal


def style_boxes(roi_nodes) -> None:
    for node in roi_nodes:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*BOX_COLOR)
        display.SetColor(*BOX_COLOR)
        display.SetFillOpacity(0.15)


def render_figure(image_path, points_path, output, boxes_path=None, spacing=None, size=(500, 500),
                  field_of_view_mm=None, uncertain_below: float = 0.5, views=("Red", "Yellow", "Green")) -> Path:
    """Load the image and results as the modules do; save Slicer's slice views through the points' centre.

    2D images get one (axial) view. Views are side by side, as in Slicer's
    "1 x 3 slice" layout; each shows the points and box outlines on its plane.
    """
    from LandmarkLocalizerLib import mrml

    from landmarkloc.geometry.frames import lps_to_ras
    from landmarkloc.io.image import read_image
    from landmarkloc.io.markups import read_boxes, read_points

    scene = scene_with_slicer_logics()
    volume = mrml.image_to_volume(scene, read_image(image_path, spacing=spacing), Path(image_path).name)
    geometry = mrml.volume_geometry(volume)
    if geometry.ndim == 2 or geometry.size[2] == 1:
        views = views[:1]
    points = mrml.place_on_slice(read_points(points_path), geometry) if points_path else []
    if points:
        mrml.add_points_node(scene, points, "landmarks", confidence_threshold=uncertain_below)
    boxes = [mrml.add_roi_node(scene, box) for box in read_boxes(boxes_path)] if boxes_path else []
    style_boxes(boxes)
    ras = np.array([lps_to_ras(p.position) for p in points]).reshape(-1, 3)
    center = np.median(ras, axis=0) if len(ras) else None  # else the volume's centre
    panels = []
    for name in views:
        with SliceView(scene, size, name) as view:
            view.show(volume, center, field_of_view_mm)
            if len(ras):
                view.show(volume, plane_with_most_points(ras, view.normal(), center), field_of_view_mm)
            panels.append(view.render())
        panels.append(np.full((panels[-1].shape[0], SEPARATOR_PX, 3), 255, np.uint8))
    save_png(np.concatenate(panels[:-1], axis=1), output)
    return Path(output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the localized image (volume file, DICOM folder or 2D picture)")
    parser.add_argument("--spacing", type=float, help="pixel size in mm for 2D pictures (PNG, JPEG, ...)")
    parser.add_argument("--points", help="localization result (.mrk.json, .fcsv or .csv)")
    parser.add_argument("--boxes", help="organ boxes (.mrk.json with ROIs)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 500), metavar=("WIDTH", "HEIGHT"),
                        help="pixels of each slice view")
    parser.add_argument("--field-of-view", type=float, help="height shown in mm (default: the whole image)")
    parser.add_argument("--views", nargs="+", default=["Red", "Yellow", "Green"], choices=sorted(DEFAULT_ORIENTATIONS),
                        help="slice views side by side (Red axial, Yellow sagittal, Green coronal)")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        render_figure(args.image, args.points, args.output, args.boxes, args.spacing, args.size, args.field_of_view,
                      views=tuple(args.views))
    except OffscreenUnavailable as exc:
        print(f"render_slicer_figure: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
