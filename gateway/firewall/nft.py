"""Adapter to nftables: libnftables in-process (ctypes), `nft -f -` as fallback.

In-process calls matter on the hot path: authorizing a client is one small
transaction, and spawning an `nft` process for it would cost milliseconds.
Debian's libnftables1 (a dependency of the nftables package) provides the
library; its C API is five functions, so a ctypes binding is enough.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import subprocess
import threading
from typing import Any

from gateway.errors import FirewallError

_NFT_CTX_OUTPUT_JSON = 1 << 4


class Nft:
    """Runs nft scripts in the current network namespace."""

    def __init__(self, prefer_library: bool = True) -> None:
        self._lock = threading.Lock()
        self._lib: Any = None
        self._ctx: Any = None
        if prefer_library:
            self._open_library()
        if self._lib is None and shutil.which("nft") is None:
            raise FirewallError(
                "neither libnftables.so.1 nor the nft command was found; "
                "install the Debian package 'nftables'"
            )

    @property
    def backend(self) -> str:
        return "libnftables" if self._lib is not None else "nft"

    def _open_library(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint32
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    def run(self, script: str, json_output: bool = False) -> str:
        """Run one script as one transaction; return its output or raise FirewallError."""
        if self._lib is None:
            return self._run_process(script, json_output)
        with self._lock:
            flags = self._lib.nft_ctx_output_get_flags(self._ctx)
            if json_output:
                self._lib.nft_ctx_output_set_flags(self._ctx, flags | _NFT_CTX_OUTPUT_JSON)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
                out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
                err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
            finally:
                self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        if rc != 0:
            raise FirewallError(_explain(err, script))
        return out

    def run_json(self, command: str) -> list[dict[str, Any]]:
        out = self.run(command, json_output=True)
        try:
            data: list[dict[str, Any]] = json.loads(out)["nftables"] if out.strip() else []
        except (ValueError, KeyError) as exc:
            raise FirewallError(f"nft returned unreadable JSON for {command!r}") from exc
        return data

    @staticmethod
    def _run_process(script: str, json_output: bool) -> str:
        argv = ["nft", "-j", "-f", "-"] if json_output else ["nft", "-f", "-"]
        try:
            proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"could not run nft: {exc}") from exc
        if proc.returncode != 0:
            raise FirewallError(_explain(proc.stderr, script))
        return proc.stdout


def _explain(err: str, script: str) -> str:
    first = script.strip().splitlines()[0] if script.strip() else ""
    return f"nftables refused the change (first line: {first!r}): {err.strip()[:2000]}"
