"""The boundary between MRML nodes (RAS world) and the landmarkloc core (SimpleITK images, LPS points).

Everything here is Qt-free: it needs ``slicer`` (MRML, as in Slicer or the
``slicer-core`` package) and ``vtk``, imported inside the functions so that the
rest of this package (the worker that runs in a subprocess) imports without
them. MRML only ever changes on the thread that calls these functions, which
in Slicer is the main thread.

Geometry: a volume's voxel (i, j, k) lies at ``W @ IJKToRAS @ (i, j, k, 1)`` in
Slicer's world, where ``W`` is the volume's linear parent transform to world.
That world geometry becomes the SimpleITK image's LPS origin/spacing/direction
(through :mod:`landmarkloc.geometry.frames`, the one LPS/RAS conversion), so
every point the core returns is already a world position. Non-linear parent
transforms are refused: a warped volume has no grid geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry, lps_to_ras, lps_to_ras_matrix, ras_to_lps, to_point3
from landmarkloc.io.image import _to_grey as picture_to_grey  # the CLI's RGB(A) -> grey, so both agree
from landmarkloc.io.image import check_image
from landmarkloc.io.markups import describe, points_by_label, split_description, write_boxes, write_points
from landmarkloc.points import Box, ControlPoint

EVIDENCE_COLOR_NAME = "LandmarkLoc evidence"
# What the input selectors offer: grey volumes and pictures (PNG/JPEG load as RGB(A) vector volumes and are
# used as grey, as the CLI does). Exact classes: label maps and other subclasses are not images to localize in.
INPUT_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
# Okabe-Ito colours, told apart with every common colour-vision deficiency (and from the boxes' light blue)
UNCERTAIN_COLOR = (0.9, 0.62, 0.0)  # unselected (uncertain) points: amber (#E69F00)
CONFIDENT_COLOR = (0.0, 0.62, 0.45)  # selected points: bluish green (#009E73)
ENGINE_FLAGGED_ATTRIBUTE = "landmarkloc.engineFlagged"  # IDs of the points the engine itself called uncertain
SOURCE_VOLUME_ROLE = "landmarklocSourceVolume"  # node reference: the volume a point list was localized in


# --------------------------------------------------------------------------- volumes


def _vtk_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_vtk(array):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def world_transform(node) -> np.ndarray:
    """The 4x4 RAS matrix from a transformable node's local coordinates to world (identity without a parent)."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"{node.GetName()} is under the non-linear transform {parent.GetName()!r}; "
                         "harden it (Data module: right-click > Harden transform) or remove it first")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _vtk_to_numpy(m)


def volume_ijk_to_world(volume_node) -> np.ndarray:
    """4x4 matrix mapping voxel (i, j, k, 1) to world RAS, parent transform included."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return world_transform(volume_node) @ _vtk_to_numpy(m)


def volume_geometry(volume_node) -> ImageGeometry:
    """The volume's world geometry in LPS (3D; single-slice volumes have size 1 along k)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("select an input volume that contains image data")
    ijk_to_world = volume_ijk_to_world(volume_node)
    axes_ras = ijk_to_world[:3, :3]
    spacing = np.linalg.norm(axes_ras, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{volume_node.GetName()} has a zero voxel size (or a degenerate transform)")
    direction_lps = lps_to_ras_matrix(axes_ras / spacing)  # the row flip is its own inverse
    origin_lps = ras_to_lps(ijk_to_world[:3, 3])
    size = volume_node.GetImageData().GetDimensions()
    try:
        return ImageGeometry(origin=origin_lps, spacing=spacing, direction=direction_lps, size=size)
    except InputError as exc:
        raise InputError(f"{volume_node.GetName()}: {exc} (a parent transform with shear or scaling "
                         "cannot be applied to a voxel grid; harden or remove it)") from None


def first_input_volume(scene):
    """The volume a module offers first: the first node of exactly an input class (not a label map)."""
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.GetClassName() in INPUT_VOLUME_CLASSES:
            return node
    return None


def volume_to_image(volume_node, dtype=np.float32) -> sitk.Image:
    """A volume node as a SimpleITK image with its exact world geometry in LPS.

    Pictures (an RGB or RGBA vector volume, as Slicer loads PNG and JPEG files)
    become grey: the channel itself when all are equal, else luminance.
    """
    geometry = volume_geometry(volume_node)
    components = volume_node.GetImageData().GetNumberOfScalarComponents()
    picture = volume_node.IsA("vtkMRMLVectorVolumeNode") and components in (3, 4)
    if components != 1 and not picture:
        raise InputError(f"{volume_node.GetName()} has {components} components per voxel (a vector or tensor "
                         "volume); a grey image or an RGB picture is needed")
    import slicer

    array = np.asarray(slicer.util.arrayFromVolume(volume_node))  # [k, j, i] or [k, j, i, components]
    if picture:
        array = sitk.GetArrayFromImage(picture_to_grey(sitk.GetImageFromArray(array, isVector=True)))
    image = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array.astype(dtype, copy=False))))
    if np.issubdtype(dtype, np.floating):
        check_image(image, name=volume_node.GetName())
    return image


def image_to_volume(scene, image: sitk.Image, name: str, node=None, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Put a SimpleITK image (2D or 3D, LPS) into a volume node in world coordinates (no parent transform)."""
    import slicer

    geometry = ImageGeometry.from_image(image)
    array = sitk.GetArrayFromImage(image)
    if geometry.ndim == 2:
        array = array[None]
    ijk_to_lps = np.eye(4)
    d = geometry.ndim
    ijk_to_lps[:d, :d] = geometry.direction * geometry.spacing[None, :]
    ijk_to_lps[:d, 3] = geometry.origin
    ijk_to_ras = ijk_to_lps.copy()
    ijk_to_ras[:3, :4] = lps_to_ras_matrix(ijk_to_lps[:3, :4])
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(_numpy_to_vtk(ijk_to_ras))
    node.SetAndObserveTransformNodeID(None)
    return node


# --------------------------------------------------------------------------- point lists


def shown_as_confident(selected_by_engine: bool, properties: dict, uncertain_below: float) -> bool:
    """Whether a point is drawn (and selected) as confident; uncertain points are unselected, drawn amber.

    A point the engine flagged stays uncertain. Calibrated points (``p_large_error``) keep the engine's
    decision, made from the model's calibrated probability of a large error; for the others the module's
    'uncertain below' threshold on the raw confidence flags more.
    """
    if not threshold_applies(properties):
        return bool(selected_by_engine)
    return bool(selected_by_engine and properties["confidence"] >= uncertain_below)


def threshold_applies(properties: dict) -> bool:
    """Whether the 'uncertain below' threshold decides for a point: it has a raw confidence and no calibration."""
    return "p_large_error" not in properties and isinstance(properties.get("confidence"), (int, float))


def add_points_node(scene, points, name: str, confidence_threshold: float = 0.0, node=None):
    """A fiducial node with one labelled control point per point, in world RAS.

    Uncertain points (:func:`shown_as_confident`) are left unselected, which
    Slicer draws in the node's (amber) unselected colour and a user can filter
    on; the confidence is in each point's description.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    else:
        node.RemoveAllControlPoints()
    import vtk

    was_modifying = node.StartModify()
    flagged = []
    for point in points:
        index = node.AddControlPointWorld(vtk.vtkVector3d(*lps_to_ras(point.position)), point.label)
        node.SetNthControlPointDescription(index, describe(point))
        node.SetNthControlPointSelected(index, shown_as_confident(point.selected, point.properties,
                                                                  confidence_threshold))
        node.SetNthControlPointLocked(index, False)
        if not point.selected:
            flagged.append(node.GetNthControlPointID(index))
    node.SetAttribute(ENGINE_FLAGGED_ATTRIBUTE, " ".join(flagged))
    node.EndModify(was_modifying)
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is not None:
        display.SetColor(*UNCERTAIN_COLOR)
        display.SetSelectedColor(*CONFIDENT_COLOR)
    return node


def set_engine_flag(node, index: int, flagged: bool) -> None:
    """Record the engine's verdict on one point (after Refine), which the threshold can add to, never undo."""
    point_id = node.GetNthControlPointID(index)
    ids = [i for i in (node.GetAttribute(ENGINE_FLAGGED_ATTRIBUTE) or "").split() if i != point_id]
    node.SetAttribute(ENGINE_FLAGGED_ATTRIBUTE, " ".join(ids + ([point_id] if flagged else [])))


def apply_uncertain_below(node, uncertain_below: float) -> None:
    """Re-decide which points are drawn as uncertain after the threshold changed (the module's slider); points
    it does not apply to (calibrated, or placed by hand without a confidence) keep their selection."""
    flagged = set((node.GetAttribute(ENGINE_FLAGGED_ATTRIBUTE) or "").split())
    was_modifying = node.StartModify()
    for i in range(node.GetNumberOfControlPoints()):
        _, props = split_description(node.GetNthControlPointDescription(i))
        if threshold_applies(props):
            engine_says = node.GetNthControlPointID(i) not in flagged
            node.SetNthControlPointSelected(i, shown_as_confident(engine_says, props, uncertain_below))
    node.EndModify(was_modifying)


def set_source_volume(points_node, volume_node) -> None:
    """Remember the volume the points were found in (a node reference: saved with the scene, kept across IDs)."""
    points_node.SetNodeReferenceID(SOURCE_VOLUME_ROLE, volume_node.GetID() if volume_node is not None else None)


def source_volume(points_node):
    """The volume the points were found in, None if unknown or no longer in the scene."""
    return points_node.GetNodeReference(SOURCE_VOLUME_ROLE) if points_node is not None else None


def position_defined(node, index: int) -> bool:
    """Whether control point ``index`` has been placed (Slicer keeps placeholders for points still to place)."""
    return node.GetNthControlPointPositionStatus(index) == node.PositionDefined


def point_position_lps(node, index: int) -> np.ndarray:
    """World position of a control point in LPS (the node's parent transform applied)."""
    ras = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, ras)
    return ras_to_lps(np.asarray(ras, dtype=np.float64))


def points_from_node(node) -> list:
    """The defined control points of a markups node as ControlPoints in LPS world coordinates."""
    world_transform(node)  # refuse non-linear parents with a clear message
    points = []
    for i in range(node.GetNumberOfControlPoints()):
        if not position_defined(node, i):
            continue
        text, props = split_description(node.GetNthControlPointDescription(i))
        points.append(ControlPoint(label=node.GetNthControlPointLabel(i) or f"{node.GetName()}-{i + 1}",
                                   position=point_position_lps(node, i), description=text,
                                   selected=bool(node.GetNthControlPointSelected(i)), properties=props))
    return points


def set_point(node, index: int, point: ControlPoint) -> None:
    """Move control point ``index`` to a new LPS world position and update its description."""
    import vtk

    node.SetNthControlPointPositionWorld(index, vtk.vtkVector3d(*lps_to_ras(point.position)))
    node.SetNthControlPointDescription(index, describe(point))


def control_point_index(node, label: str) -> int:
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointLabel(i) == label:
            return i
    raise InputError(f"{node.GetName()} has no control point labelled {label!r}")


@dataclass
class ResultRow:
    """One row of a results table: what the user sees for a control point."""

    index: int
    label: str
    position_ras: tuple
    confidence: object  # float or None
    uncertain: bool
    error_radius_mm: object = None  # calibrated models: the 90 % error radius (float), else None

    @property
    def position_text(self) -> str:
        return ", ".join(f"{v:.1f}" for v in self.position_ras)

    @property
    def confidence_text(self) -> str:
        return "" if self.confidence is None else f"{self.confidence:.2f}"

    @property
    def radius_text(self) -> str:
        return "" if self.error_radius_mm is None else f"{self.error_radius_mm:.1f}"


def result_rows(node) -> list:
    """Rows (label, RAS world position, confidence, error radius) for each point of ``node``, as Slicer shows
    coordinates;
    uncertain = unselected, as the views draw it."""
    rows = []
    for i in range(node.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, ras)
        _, props = split_description(node.GetNthControlPointDescription(i))
        confidence = props.get("confidence")
        confidence = float(confidence) if isinstance(confidence, (int, float)) else None
        radius = props.get("error_radius_mm")
        radius = float(radius) if isinstance(radius, (int, float)) else None
        rows.append(ResultRow(i, node.GetNthControlPointLabel(i), tuple(ras), confidence,
                              not node.GetNthControlPointSelected(i), radius))
    return rows


def place_on_slice(items, geometry: ImageGeometry) -> list:
    """Put 2D results (z = 0) onto the plane of the single-slice volume they were found in.

    2D engines work in the slice's x-y plane (they refuse slices that are not
    in it), so every voxel of the slice has the z of its origin.
    """
    if geometry.ndim == 3 and geometry.size[2] != 1:
        return list(items)
    z = float(geometry.origin[2]) if geometry.ndim == 3 else 0.0
    for item in items:
        (item.center if isinstance(item, Box) else item.position)[2] = z
    return list(items)


def check_points_inside(points, geometry: ImageGeometry, what: str = "support image") -> None:
    """Refuse points that lie outside an image (e.g. support points placed on another volume)."""
    if not points:
        raise InputError(f"no points given for the {what}")
    p = np.array([to_point3(pt.position) for pt in points])[:, : geometry.ndim]
    inside = geometry.contains(p)
    if not inside.all():
        names = ", ".join(pt.label for pt, ok in zip(points, inside) if not ok)
        raise InputError(f"point(s) {names} lie outside the {what}; place them on that volume")
    points_by_label(points)  # duplicate labels would make the result ambiguous


# --------------------------------------------------------------------------- ROI boxes


def add_roi_node(scene, box: Box, node=None):
    """A Box-type ROI node (centre, size, orientation) in world RAS, named after the box."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", box.name)
    node.SetROIType(node.ROITypeBox)
    object_to_ras = np.eye(4)
    object_to_ras[:3, :3] = lps_to_ras_matrix(box.orientation)
    object_to_ras[:3, 3] = lps_to_ras(box.center)
    node.SetAndObserveObjectToNodeMatrix(_numpy_to_vtk(object_to_ras))
    node.SetSize(*[float(v) for v in box.size])
    # The description (e.g. the spread) goes on the centre control point, as in .mrk.json files:
    # the markups logic clears a node's own description when another markups node is added.
    if node.GetNumberOfControlPoints():
        node.SetNthControlPointDescription(0, box.description)
    return node


def roi_description(node) -> str:
    return node.GetNthControlPointDescription(0) if node.GetNumberOfControlPoints() else ""


def box_from_roi_node(node) -> Box:
    """An ROI node as a Box in LPS world coordinates (parent transform applied to the centre and axes)."""
    to_world = world_transform(node)
    object_to_node = _vtk_to_numpy(node.GetObjectToNodeMatrix())
    object_to_world = to_world @ object_to_node
    axes = object_to_world[:3, :3]
    scale = np.linalg.norm(axes, axis=0)
    size = np.asarray(node.GetSize(), dtype=np.float64) * scale
    return Box(name=node.GetName(), center=ras_to_lps(object_to_world[:3, 3]), size=size,
               orientation=lps_to_ras_matrix(axes / scale), description=roi_description(node))


# --------------------------------------------------------------------------- label maps and segmentations


def labelmap_from_segmentation(segmentation_node, reference_volume, segment_ids=None) -> tuple:
    """(label map image in LPS, label values, segment names) of a segmentation on the reference grid.

    The temporary label map node is removed again, so the scene is unchanged.
    """
    import slicer
    import vtk

    if segmentation_node is None:
        raise InputError("select a segmentation with the organs to find")
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    if segment_ids is None:
        segmentation.GetSegmentIDs(ids)
    else:
        for sid in segment_ids:
            ids.InsertNextValue(sid)
    if ids.GetNumberOfValues() == 0:
        raise InputError(f"{segmentation_node.GetName()} has no segments")
    names = [segmentation.GetSegment(ids.GetValue(i)).GetName() for i in range(ids.GetNumberOfValues())]
    scene = segmentation_node.GetScene()
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "landmarkloc-temporary-labels")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap_node, reference_volume)
        if not ok or labelmap_node.GetImageData() is None:
            raise InputError(f"cannot convert {segmentation_node.GetName()} to a label map on "
                             f"{reference_volume.GetName() if reference_volume else 'its own grid'}")
        image = volume_to_image(labelmap_node, dtype=np.int32)
    finally:
        # the export also adds a display node and a colour table: remove everything it added
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in existing:
                scene.RemoveNode(node)
    labels = list(range(1, len(names) + 1))
    return image, labels, names


def labelmap_from_volume(labelmap_node) -> tuple:
    """(label map image, label values, names) of a label map volume; names from its colour table if any."""
    image = volume_to_image(labelmap_node, dtype=np.int32)
    labels = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(image)) if v != 0]
    if not labels:
        raise InputError(f"{labelmap_node.GetName()} contains no labels (all voxels are 0)")
    names = [str(v) for v in labels]
    display = labelmap_node.GetDisplayNode()
    colors = display.GetColorNode() if display is not None else None
    if colors is not None:
        names = [colors.GetColorName(v) or str(v) for v in labels]
    return image, labels, names


# --------------------------------------------------------------------------- evidence


def evidence_color_node(scene):
    """A black-red-yellow colour table for posterior maps, created once per scene."""
    existing = scene.GetFirstNodeByName(EVIDENCE_COLOR_NAME)
    if existing is not None:
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", EVIDENCE_COLOR_NAME)
    node.SetTypeToUser()
    n = 256
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        node.SetColor(i, f"p{i}", min(1.0, 3 * t), min(1.0, max(0.0, 3 * t - 1)), max(0.0, 3 * t - 2),
                      0.0 if i == 0 else 1.0)
    node.SetAttribute("Category", "landmarkloc")
    return node


def show_evidence(scene, image: sitk.Image, name: str, node=None):
    """A volume node with a posterior map (0..1) and the evidence colour table."""
    node = image_to_volume(scene, image, name, node=node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(evidence_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    return node


# --------------------------------------------------------------------------- export


def export_points(node, path, coordinate_system: str = "LPS", name: str = None) -> None:
    """Write a point list node to .mrk.json, .fcsv or .csv (world coordinates, LPS by default); the list is called
    ``name`` in the file (default: the node's name; "" names it after the file, as the command line does)."""
    write_points(path, points_from_node(node), coordinate_system=coordinate_system,
                 name=node.GetName() if name is None else name)


def export_boxes(roi_nodes, path, coordinate_system: str = "LPS") -> None:
    """Write ROI nodes to one .mrk.json file."""
    boxes = [box_from_roi_node(n) for n in roi_nodes]
    if not boxes:
        raise InputError("there are no boxes to export")
    write_boxes(path, boxes, coordinate_system=coordinate_system)
