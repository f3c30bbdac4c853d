"""``landmarkloc web``: Localize, Refine, one-shot Find and export in a browser (trame-slicer; docs/web.md).

The page is served by ``LandmarkLocWeb/LandmarkLocWebLib`` over the Slicer modules' own logic
(``LandmarkLocalizerLib``, ``RPROneShotLib``), which live beside this package in a clone; it needs the ``web``
extra, installed in its own environment (``VENV=.venv-web bash scripts/setup.sh web``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import InputError
from . import add_device_argument

EXAMPLE = """examples:
  landmarkloc web --data-folder ~/scans
  (serves on http://127.0.0.1:8080/ only; open it in a browser on this machine, click 'MNI152 T1 sample', then
  Localize; images are opened from ~/scans only)

  landmarkloc web --host 0.0.0.0 --port 8081 --data-folder /data/ct --max-upload-mb 1024
  (reachable from other machines: prints the address with its access token; requests without it are refused;
  put it behind an HTTPS reverse proxy on a real network)
"""
# The folders beside the package that hold the page and the module logic it shares with Slicer.
LIB_FOLDERS = ("LandmarkLocalizer", "RPROneShot", "LandmarkLocWeb")
EXTRA_HELP = "install the web extra into its own environment: VENV=.venv-web bash scripts/setup.sh web (docs/web.md)"


def register(sub) -> None:
    p = sub.add_parser("web", help="serve the localizer as a web page (trame-slicer; needs the 'web' extra)",
                       description="Serve Localize, Refine, one-shot Find and export in a browser, with Slicer's "
                       "slice views and 3D view (trame-slicer). Serves on 127.0.0.1 unless --host names another "
                       "address beyond this machine; then an access token is printed and every request without it "
                       "is refused. Images are opened only from --data-folder, or uploaded (at most --max-upload-mb).",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: 127.0.0.1, this machine only); one reachable from other "
                   "machines (e.g. 0.0.0.0) needs the access token printed at start")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--data-folder", default=".",
                   help="the only folder images are opened from, by a path relative to it (default: .)")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="largest upload in MB (default: 512)")
    add_device_argument(p)
    p.set_defaults(func=run)


def lib_folders() -> list:
    """The clone's module folders (the page shares the Slicer modules' logic); InputError outside a clone."""
    root = Path(__file__).resolve().parents[2]
    folders = [root / name for name in LIB_FOLDERS]
    missing = [f.name for f in folders if not f.is_dir()]
    if missing:
        raise InputError(f"landmarkloc web runs from a clone of the repository: {', '.join(missing)} not found "
                         f"beside {root / 'landmarkloc'}")
    return folders


def run(args) -> int:
    for folder in lib_folders():
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    from LandmarkLocWebLib.guard import make_config

    config = make_config(args.host, args.port, args.data_folder, args.max_upload_mb, args.device)
    # before trame and VTK load: uploads fit into one websocket message; trame reads only these arguments
    os.environ["TRAME_WS_MAX_MSG_SIZE"] = str(config.max_upload_bytes + 2**20)
    os.environ["TRAME_ARGS"] = f"--host {config.host} --port {config.port} --timeout 0"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # a server without a display
    try:
        from LandmarkLocWebLib.app import WebApp
    except ImportError as exc:
        raise InputError(f"landmarkloc web cannot start ({exc}); {EXTRA_HELP}") from None
    app = WebApp(config)
    print(f"landmarkloc web: serving {config.url()} (data folder {config.data_folder}; Ctrl-C stops)", flush=True)
    if config.token:
        print(f"landmarkloc web: every request needs the access token; from another machine open "
              f"{config.url('THIS-MACHINE')} with this machine's name or address", flush=True)
    try:
        app.start()
    finally:  # also on Ctrl-C or SIGTERM: a running worker (in its own process group) is ended
        app.session.close()
    return 0
