"""What keeps ``landmarkloc web`` safe by default, without trame or MRML (tested anywhere).

* It serves on 127.0.0.1. Another address needs ``--host`` and then an access
  token: every HTTP request and the websocket must carry it (the page's address
  once, then a cookie the server sets), others get 403.
* Files are opened only inside the allowed folder (``--data-folder``): no
  absolute paths, no ``..``, no symbolic link out of it.
* Uploads larger than ``--max-upload-mb`` are refused before they are read.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from landmarkloc.errors import InputError

TOKEN_PARAMETER = "token"  # in the page's address: http://HOST:PORT/?token=...
TOKEN_COOKIE = "landmarkloc_token"


@dataclass(frozen=True)
class WebConfig:
    """How ``landmarkloc web`` serves (the command line's options)."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_folder: Path = Path(".")
    max_upload_mb: float = 512.0
    device: str = "auto"
    token: str = ""  # required from every request when not empty (always when bound beyond loopback)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def url(self, host: str = None) -> str:
        """The address to open (with the token when one is needed)."""
        shown = host or ("127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host)
        shown = f"[{shown}]" if ":" in shown else shown
        query = f"/?{TOKEN_PARAMETER}={self.token}" if self.token else "/"
        return f"http://{shown}:{self.port}{query}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_config(host: str, port: int, data_folder, max_upload_mb: float, device: str = "auto",
                token: str = "") -> WebConfig:
    """The checked configuration; a token is made for any address beyond loopback (or kept when given)."""
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    if max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    folder = Path(data_folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"--data-folder {folder} is not a folder")
    if token and len(token) < 16:
        raise InputError("an access token needs at least 16 characters")
    if not token and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    return WebConfig(host=host, port=port, data_folder=folder.resolve(), max_upload_mb=float(max_upload_mb),
                     device=device, token=token)


def token_matches(expected: str, given) -> bool:
    """Constant-time comparison; no token is needed when none is expected."""
    if not expected:
        return True
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def allowed_path(folder, relative: str) -> Path:
    """``relative`` inside the allowed ``folder`` (resolved: symbolic links followed), or InputError."""
    text = (relative or "").strip()
    if not text:
        raise InputError("type the path of an image inside the data folder")
    root = Path(folder).resolve()
    candidate = Path(text)
    if candidate.is_absolute():
        raise InputError(f"{text}: give a path relative to the data folder, not an absolute path")
    path = (root / candidate).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"{text} is outside the data folder; only files inside it can be opened")
    if not path.exists():
        raise InputError(f"{text} was not found in the data folder")
    return path


def check_upload_size(name: str, size: int, limit_bytes: int) -> None:
    if size > limit_bytes:
        raise InputError(f"{name} is {size / 2**20:.1f} MB; uploads are limited to {limit_bytes / 2**20:.0f} MB "
                         "(landmarkloc web --max-upload-mb)")


def upload_file_name(name: str) -> str:
    """The uploaded file's own name (no folders): the name the results are called after, as the CLI does."""
    base = Path(str(name or "").replace("\\", "/")).name
    if base in ("", ".", ".."):
        raise InputError("the uploaded file has no name")
    return base
