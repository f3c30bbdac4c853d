"""The page of ``landmarkloc web``: Slicer's slice views and 3D view (trame-slicer) beside the controls of the
Landmark Localizer and RPR One-Shot modules. Everything it does goes through :class:`.session.WebSession`.

The server runs one asyncio loop: MRML changes only on it; a job's worker runs in its own process and is polled
from the loop (as Slicer's QTimer polls it), so the page stays live during Localize and Cancel stops it at once.
Needs the ``web`` extra (trame-slicer over slicer-core 5.11; docs/web.md) and an OpenGL the views can render
with (EGL on a server without a display: ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``).
"""

from __future__ import annotations

import asyncio

import slicer
from aiohttp import web
from trame.app import get_server
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from landmarkloc.errors import LandmarkLocError

from .guard import TOKEN_COOKIE, TOKEN_PARAMETER, WebConfig, check_upload_size, token_matches
from .session import EXPORT_FORMATS, WebSession

POLL_SECONDS = 0.1
LAYOUT = "Quad View"
CELL_STYLE = "white-space: nowrap; padding: 0 6px;"
ROW_HEADERS = [{"title": "Landmark", "key": "label"}, {"title": "R, A, S (mm)", "key": "position"},
               {"title": "Confidence", "key": "confidence"}, {"title": "Radius (mm)", "key": "radius"}]


def token_middleware(token: str):
    """aiohttp middleware: 403 for any request (page, scripts, websocket) without the access token; the token in
    the page's address is kept in a cookie (HttpOnly, same site) for the requests that follow."""

    @web.middleware
    async def require_token(request, handler):
        given = request.query.get(TOKEN_PARAMETER) or request.cookies.get(TOKEN_COOKIE)
        if not token_matches(token, given):
            return web.Response(status=403, text="landmarkloc web: this server needs its access token: open the "
                                "address it printed (with ?token=...)\n")
        try:
            response = await handler(request)
        except web.HTTPException as redirect:  # "/" redirects to the page: the browser follows with the cookie
            remember(request, redirect)
            raise
        if not isinstance(response, web.WebSocketResponse):
            remember(request, response)
        return response

    def remember(request, response) -> None:
        if request.query.get(TOKEN_PARAMETER):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")

    return require_token


class WebApp:
    def __init__(self, config: WebConfig):
        self.config = config
        self.server = get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        slicer.mrmlScene = self.slicer_app.scene  # slicer.util (arrays of volumes) finds the scene here
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self.session = WebSession(self.slicer_app.scene, config)
        self._observed = None
        self._poller = None
        self._init_state()
        self._build_ui()
        if config.token:
            self.server.controller.on_server_bind.add(
                lambda wslink_server: wslink_server.app.middlewares.append(token_middleware(config.token)))

    @property
    def state(self):
        return self.server.state

    # ------------------------------------------------------------------ state

    def _init_state(self) -> None:
        s, session = self.state, self.session
        s.trame__title = "landmarkloc"
        s.max_upload_bytes = self.config.max_upload_bytes
        s.fcn_models = [{"title": m.label, "value": m.path} for m in session.fcn_models]
        s.fcn_model = session.fcn_models[0].path if session.fcn_models else None
        s.coarse_models = [{"title": m.label, "value": m.path} for m in session.coarse_models]
        s.coarse_model = session.coarse_models[0].path if session.coarse_models else None
        s.fine_models = [{"title": m.label, "value": m.path} for m in session.fine_models]
        s.fine_model = session.fine_models[0].path if session.fine_models else None
        s.templates = [{"title": t.name, "value": t.path} for t in session.templates]
        s.template = session.templates[0].path if session.templates else None
        s.path_text = ""
        s.upload = None
        s.selected_index = -1
        s.export_stem = ""
        self._show_status()
        self._show_results()

    def _show_status(self) -> None:
        st, s = self.session.status, self.state
        s.busy, s.progress, s.stage = st.busy, round(100 * st.fraction), st.stage
        s.message, s.message_error = st.message, st.error
        s.warnings = list(st.warnings)
        s.volume_name = self.session.volume.GetName() if self.session.volume is not None else ""

    def _show_results(self) -> None:
        s = self.state
        s.rows = self.session.rows()
        s.n_boxes = len(self.session.rois)
        s.export_stem = self.session.source_name
        if not 0 <= s.selected_index < len(s.rows):
            s.selected_index = -1

    def _say_error(self, text: str) -> None:
        self.state.message, self.state.message_error = text, True

    # ------------------------------------------------------------------ actions

    def _guarded(self, action, *args) -> None:
        """Run a page action; a user error becomes the page's message, never a traceback."""
        try:
            action(*args)
        except LandmarkLocError as exc:
            with self.state:
                self._show_status()
                self._say_error(str(exc))
            return
        with self.state:
            self._show_status()
            self._show_results()

    def _volume_opened(self) -> None:
        views = self.slicer_app.display_manager
        views.show_volume_in_slice_background(self.session.volume)
        views.show_volume_in_slice_foreground(None)
        views.set_node_visible_in_group(self.session.volume)
        views.reset_views()
        self._observe(None)

    def _open(self, opener, *args) -> None:
        opener(*args)
        self._volume_opened()

    def open_sample(self) -> None:
        self._guarded(self._open, self.session.open_sample)

    def open_path(self) -> None:
        self._guarded(self._open, self.session.open_path, self.state.path_text)

    def on_upload(self, upload, **_) -> None:
        if not upload:
            return
        self.state.upload = None  # the content is not kept in the page's state
        content = upload.get("content")
        if isinstance(content, list):
            content = b"".join(content)
        self._guarded(self._open, self.session.open_upload, upload.get("name", ""), content or b"")

    def refuse_upload(self, name: str, size: int) -> None:
        """The page found the file too large and did not send it: say why, as the server would."""
        self._guarded(check_upload_size, name, int(size), self.config.max_upload_bytes)

    def localize(self) -> None:
        self._run(lambda: self.session.localize(self.state.fcn_model))

    def refine(self) -> None:
        self._run(lambda: self.session.refine(int(self.state.selected_index), self.state.fcn_model))

    def find(self) -> None:
        self._run(lambda: self.session.find(self.state.template, self.state.coarse_model,
                                            self.state.fine_model or ""))

    def cancel(self) -> None:
        self.session.cancel()
        with self.state:
            self._show_status()

    def _run(self, start) -> None:
        self._guarded(start)
        if self.session.busy and self._poller is None:
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        """Follow the job on the server's loop (the worker runs in its own process) until it ends."""
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                running = self.session.poll()
                with self.state:
                    self._show_status()
                    if not running:
                        self._observe(self.session.points)
                        self._show_results()
                if not running:
                    return
        finally:
            self._poller = None

    def _observe(self, node) -> None:
        """Keep the table in step with the point list (a point dragged in a view moves its row)."""
        if self._observed is not None:
            self._observed[0].RemoveObserver(self._observed[1])
            self._observed = None
        if node is not None:
            tag = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._point_moved)
            self._observed = (node, tag)

    def _point_moved(self, *_) -> None:
        with self.state:
            self._show_results()

    def select_point(self, index: int) -> None:
        """Centre the slice views on the point (its glyph is then in the middle of each view)."""
        index = int(index)
        if self.session.points is None or not 0 <= index < self.session.points.GetNumberOfControlPoints():
            return
        self.state.selected_index = index
        r, a, s = self.session.point_ras(index)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.slicer_app.scene, r, a, s,
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)  # as Slicer's table does

    def export_points(self, fmt: str) -> str:
        try:
            return self.session.export(fmt)[1]
        except LandmarkLocError as exc:
            self._say_error(str(exc))
            return ""

    # ------------------------------------------------------------------ page

    def _build_ui(self) -> None:
        ctrl, state = self.server.controller, self.state
        state.change("upload")(self.on_upload)
        ctrl.trigger("refuse_upload")(self.refuse_upload)
        ctrl.trigger("select_point")(self.select_point)
        ctrl.trigger("export_points")(self.export_points)
        with SinglePageWithDrawerLayout(self.server, full_height=True) as page:
            page.title.set_text("landmarkloc")
            page.footer.hide()
            page.drawer.width = 440
            with page.toolbar:
                v3.VSpacer()
                html.Div("{{ volume_name }}", classes="text-body-2 mr-4", id="volume-name")
            with page.drawer:
                self._volume_card()
                self._message_area()
                self._localize_card()
                self._find_card()
                self._results_card()
            with page.content:
                with html.Div(style="position: relative; height: calc(100vh - 64px); width: 100%;", id="views"):
                    self.layout_manager.initialize_layout_grid(page)

    def _volume_card(self) -> None:
        with v3.VCard(title="Volume", density="compact", variant="flat"), v3.VCardText():
            v3.VBtn("MNI152 T1 sample", click=self.open_sample, disabled=("busy",), block=True, id="open-sample",
                    prepend_icon="mdi-brain", classes="mb-2")
            with html.Div(classes="d-flex"):
                v3.VTextField(v_model=("path_text",), label="Path in the data folder", density="compact",
                              hide_details=True, id="path-text")
                v3.VBtn("Open", click=self.open_path, disabled=("busy",), id="open-path", classes="ml-2")
            html.Input(type="file", id="upload-input", classes="mt-2", disabled=("busy",),
                       change="const f = $event.target.files[0]; if (f) { f.size > max_upload_bytes ? "
                              "trigger('refuse_upload', [f.name, f.size]) : set('upload', f) }; "
                              "$event.target.value = ''")

    def _message_area(self) -> None:
        v3.VAlert(v_if="message", text=("message",), type=("message_error ? 'error' : 'info'",),
                  density="compact", variant="tonal", classes="mx-4 mb-2", id="message",
                  __properties=[("data_kind", "data-kind")], data_kind=("message_error ? 'error' : 'info'",))
        v3.VAlert(v_for="(w, i) in warnings", key="i", text=("w",), type="warning", density="compact",
                  variant="tonal", classes="mx-4 mb-2 warning-line")
        with html.Div(v_if="busy", classes="mx-4 mb-2", id="progress"):
            v3.VProgressLinear(model_value=("progress",), height=8, color="primary")
            html.Div("{{ stage }}", classes="text-caption", id="stage")

    def _localize_card(self) -> None:
        with v3.VCard(title="Landmark Localizer", density="compact", variant="flat"), v3.VCardText():
            v3.VSelect(v_model=("fcn_model",), items=("fcn_models",), label="Model", density="compact",
                       hide_details=True, id="fcn-model")
            with html.Div(classes="d-flex mt-2"):
                v3.VBtn("Localize", v_if="!busy", click=self.localize, disabled=("!volume_name",), color="primary",
                        id="localize")
                v3.VBtn("Cancel", v_if="busy", click=self.cancel, color="error", id="cancel")
                v3.VBtn("Refine selected", click=self.refine, disabled=("busy || selected_index < 0",),
                        classes="ml-2", id="refine")

    def _find_card(self) -> None:
        with v3.VCard(title="RPR One-Shot", density="compact", variant="flat"), v3.VCardText():
            v3.VSelect(v_model=("template",), items=("templates",), label="Saved template", density="compact",
                       hide_details=True, id="template")
            v3.VSelect(v_model=("coarse_model",), items=("coarse_models",), label="Model (coarse)",
                       density="compact", hide_details=True, classes="mt-2")
            v3.VSelect(v_model=("fine_model",), items=("fine_models",), label="Model (fine)", density="compact",
                       hide_details=True, clearable=True, classes="mt-2")
            v3.VBtn("Find", click=self.find, disabled=("busy || !volume_name",), color="primary", classes="mt-2",
                    id="find")

    def _results_card(self) -> None:
        with v3.VCard(title="Results", density="compact", variant="flat"), v3.VCardText():
            html.Div("{{ n_boxes }} boxes", v_if="n_boxes", classes="text-caption", id="n-boxes")
            with v3.VTable(density="compact", id="results", v_if="rows.length", style="font-size: 12px;"):
                with html.Thead(), html.Tr():
                    for header in ROW_HEADERS:
                        html.Th(header["title"], style=CELL_STYLE)
                with html.Tbody(), html.Tr(
                        v_for="row in rows", key="row.index", click="trigger('select_point', [row.index])",
                        style=("{cursor: 'pointer', background: row.status == 'uncertain' ? 'rgba(230,159,0,0.35)' "
                               ": (row.index == selected_index ? 'rgba(0,158,115,0.25)' : '')}",),
                        __properties=[("data_label", "data-label"), ("data_status", "data-status")],
                        data_label=("row.label",), data_status=("row.status",)):
                    for header in ROW_HEADERS:
                        html.Td(f"{{{{ row.{header['key']} }}}}", style=CELL_STYLE)
            with html.Div(v_if="rows.length", classes="d-flex mt-2"):
                for fmt, mime in EXPORT_FORMATS.items():
                    v3.VBtn(f".{fmt}", size="small", classes="mr-2", id=f"export-{fmt.replace('.', '-')}",
                            disabled=("busy",),
                            click=f"utils.download(export_stem + '.{fmt}', trigger('export_points', ['{fmt}']), "
                                  f"'{mime}')")

    # ------------------------------------------------------------------ serving

    def start(self, **kwargs) -> None:
        self.server.start(host=self.config.host, port=self.config.port, open_browser=False, show_connection_info=False,
                          **kwargs)
