"""Smoke test of the nanopix-sync C ABI through ctypes, using only what include/nanopix_sync.h documents.

Usage: smoke.py <libnanopix_sync.so> <PatientData folder> <dentaltid.db>
Prints one line "N passed, M failed" and exits non-zero when anything failed.
"""

import ctypes
import json
import sqlite3
import sys
from pathlib import Path

NPS_OK, NPS_NULL_ARGUMENT, NPS_INVALID_UTF8, NPS_INVALID_JSON = 0, 1, 2, 3
NPS_INVALID_ARGUMENT, NPS_CLOSED, NPS_TIMEOUT, NPS_NO_HANDLE = 4, 6, 7, 9
NPS_NOT_FOUND, NPS_INVALID_CONFIG = 100, 112
NPS_FILTER_ALL = 0

Handle = ctypes.c_void_p
String = ctypes.c_void_p  # library-owned char *, read then given back to nps_string_free


def load(path):
    lib = ctypes.CDLL(path)
    signatures = {
        "nps_version": (ctypes.c_char_p, []),
        "nps_open": (ctypes.c_uint32, [ctypes.c_char_p, ctypes.POINTER(Handle)]),
        "nps_close": (ctypes.c_uint32, [Handle]),
        "nps_free": (None, [Handle]),
        "nps_find_open_handle": (ctypes.c_uint32, [ctypes.POINTER(Handle)]),
        "nps_live_sync": (ctypes.c_uint32, [Handle, ctypes.POINTER(ctypes.c_bool)]),
        "nps_patients": (ctypes.c_uint32, [Handle, ctypes.c_uint32, ctypes.POINTER(String)]),
        "nps_reconcile": (ctypes.c_uint32, [Handle, ctypes.POINTER(String)]),
        "nps_possible_duplicates": (ctypes.c_uint32, [Handle, ctypes.POINTER(String)]),
        "nps_delete_requests": (ctypes.c_uint32, [Handle, ctypes.POINTER(String)]),
        "nps_dismiss_delete_request": (ctypes.c_uint32, [Handle, ctypes.c_char_p, ctypes.POINTER(ctypes.c_bool)]),
        "nps_dismiss_possible_duplicate": (ctypes.c_uint32, [Handle, ctypes.c_int64, ctypes.POINTER(ctypes.c_bool)]),
        "nps_next_event": (ctypes.c_uint32, [Handle, ctypes.c_uint32, ctypes.POINTER(String)]),
        "nps_last_error_message": (String, []),
        "nps_string_free": (None, [String]),
    }
    for name, (result, args) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, args
    return lib


class Smoke:
    def __init__(self, lib, root, db):
        self.lib, self.root, self.db = lib, root, db
        self.passed, self.failed = 0, 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {name} {detail}", file=sys.stderr)

    def take(self, pointer):
        """Reads a library-owned string and frees it."""
        if not pointer:
            return None
        text = ctypes.string_at(pointer).decode("utf-8")
        self.lib.nps_string_free(pointer)
        return text

    def last_error(self):
        return self.take(self.lib.nps_last_error_message())

    def config(self, **extra):
        return json.dumps({"nanopix_root": str(self.root), "dentaltid_db": str(self.db), **extra}).encode()

    def open(self, config):
        handle = Handle()
        return self.lib.nps_open(config, ctypes.byref(handle)), handle

    def test_version(self):
        self.check("version", self.lib.nps_version().decode().count(".") == 2)

    def test_null_arguments(self):
        out = String()
        self.check("null handle", self.lib.nps_patients(None, NPS_FILTER_ALL, ctypes.byref(out)) == NPS_NULL_ARGUMENT)
        self.check("null handle message", "handle" in (self.last_error() or ""))
        self.check("out untouched", not out.value)
        self.check("null config", self.open(None)[0] == NPS_NULL_ARGUMENT)
        self.check("null out", self.lib.nps_open(self.config(), None) == NPS_NULL_ARGUMENT)
        self.check("null close", self.lib.nps_close(None) == NPS_NULL_ARGUMENT)
        self.lib.nps_free(None)
        self.lib.nps_string_free(None)
        self.check("free(NULL) is harmless", True)

    def test_bad_input(self):
        code, handle = self.open(b"{not json")
        self.check("bad json", code == NPS_INVALID_JSON and not handle.value, code)
        self.check("bad json message", "JSON" in (self.last_error() or ""))
        self.check("invalid utf-8", self.open(b"{\"nanopix_root\": \"\xff\xfe\"}")[0] == NPS_INVALID_UTF8)
        self.check("unknown field", self.open(self.config(surprise=1))[0] == NPS_INVALID_CONFIG)
        code, _ = self.open(json.dumps({"nanopix_root": str(self.root / "absent"), "dentaltid_db": str(self.db)}).encode())
        self.check("missing folder", code == NPS_NOT_FOUND, code)
        self.check("missing folder message", "absent" in (self.last_error() or ""))

    def test_open_close_free(self):
        code, handle = self.open(self.config(watch_mode="polling"))
        self.check("open", code == NPS_OK, f"{code} {self.last_error()}")
        if code != NPS_OK:
            return
        self.check("no last error after success", self.last_error() is None)
        out = String()
        self.check("patients", self.lib.nps_patients(handle, NPS_FILTER_ALL, ctypes.byref(out)) == NPS_OK)
        self.check("patients json", len(json.loads(self.take(out))) >= 6)
        self.check("bad filter", self.lib.nps_patients(handle, 99, ctypes.byref(out)) == NPS_INVALID_ARGUMENT)
        self.check("close", self.lib.nps_close(handle) == NPS_OK)
        self.check("close again", self.lib.nps_close(handle) == NPS_OK)
        enabled = ctypes.c_bool()
        self.check("closed handle", self.lib.nps_live_sync(handle, ctypes.byref(enabled)) == NPS_CLOSED)
        self.check("closed message", "closed" in (self.last_error() or ""))
        self.check("queue ends with closed", self.drain(handle)[-1:] == ["closed"])
        self.lib.nps_free(handle)

    def test_possible_duplicates(self):
        """The clinic holds one NanoPix patient whose names are a DentalTID patient's, swapped."""
        code, handle = self.open(self.config(watch_mode="polling"))
        self.check("open for duplicates", code == NPS_OK, f"{code} {self.last_error()}")
        if code != NPS_OK:
            return
        out = String()
        self.check("reconcile", self.lib.nps_reconcile(handle, ctypes.byref(out)) == NPS_OK, self.last_error())
        self.check("reconcile reports it", json.loads(self.take(out) or "{}").get("possible_duplicates") == 1)
        self.check("null list", self.lib.nps_possible_duplicates(handle, None) == NPS_NULL_ARGUMENT)
        listed = self.review_list(handle)
        self.check("listed", [(d["reason"], len(d["candidates"])) for d in listed] == [("swapped_names", 1)], listed)
        dismissed = ctypes.c_bool()
        for expected in (True, False):
            for d in listed:
                code = self.lib.nps_dismiss_possible_duplicate(handle, d["patient_id"], ctypes.byref(dismissed))
                self.check("dismiss", code == NPS_OK and dismissed.value == expected, f"{code} {dismissed.value}")
        self.check("none left", self.review_list(handle) == [])
        self.lib.nps_free(handle)

    def test_delete_requests(self):
        """Deleting in DentalTID the NanoPix patient the last test imported asks for its delete."""
        code, handle = self.open(self.config(watch_mode="polling"))
        self.check("open for deletes", code == NPS_OK, f"{code} {self.last_error()}")
        if code != NPS_OK:
            return
        self.check("none asked", self.delete_requests(handle) == [])
        with sqlite3.connect(self.db) as db:
            (patient_id,) = db.execute("SELECT id FROM patients WHERE external_id = '20250122_091500'").fetchone()
            db.execute("DELETE FROM patients WHERE id = ?", (patient_id,))
        db.close()
        out = String()
        self.check("reconcile the delete", self.lib.nps_reconcile(handle, ctypes.byref(out)) == NPS_OK)
        self.take(out)
        asked = [{"external_id": "20250122_091500", "patient_ids": [patient_id]}]
        self.check("delete asked", self.delete_requests(handle) == asked, self.delete_requests(handle))
        self.check("null requests", self.lib.nps_delete_requests(handle, None) == NPS_NULL_ARGUMENT)
        dismissed = ctypes.c_bool()
        for expected in (True, False):
            code = self.lib.nps_dismiss_delete_request(handle, b"20250122_091500", ctypes.byref(dismissed))
            self.check("dismiss the delete", code == NPS_OK and dismissed.value == expected, f"{code} {dismissed.value}")
        self.check("null id", self.lib.nps_dismiss_delete_request(handle, None, ctypes.byref(dismissed)) == NPS_NULL_ARGUMENT)
        self.check("none left to ask", self.delete_requests(handle) == [])
        self.lib.nps_free(handle)

    def delete_requests(self, handle):
        out = String()
        code = self.lib.nps_delete_requests(handle, ctypes.byref(out))
        self.check("delete requests", code == NPS_OK, f"{code} {self.last_error()}")
        return json.loads(self.take(out) or "null")

    def review_list(self, handle):
        out = String()
        code = self.lib.nps_possible_duplicates(handle, ctypes.byref(out))
        self.check("possible duplicates", code == NPS_OK, f"{code} {self.last_error()}")
        return json.loads(self.take(out) or "null")

    def drain(self, handle):
        types, event = [], String()
        while (code := self.lib.nps_next_event(handle, 0, ctypes.byref(event))) == NPS_OK:
            types.append(json.loads(self.take(event))["type"])
        self.check("drain ends closed", code == NPS_CLOSED, code)
        return types

    def test_hot_restart(self):
        code, _ = self.open(self.config(watch_mode="polling"))
        self.check("first open", code == NPS_OK, code)
        found = Handle()
        while self.lib.nps_find_open_handle(ctypes.byref(found)) == NPS_OK:
            self.lib.nps_free(found)
        self.check("none left", self.lib.nps_find_open_handle(ctypes.byref(found)) == NPS_NO_HANDLE)
        code, again = self.open(self.config(watch_mode="polling"))
        self.check("open again after free", code == NPS_OK, f"{code} {self.last_error()}")
        self.lib.nps_free(again)

    def run(self):
        for name, test in vars(Smoke).items():  # in the order written: later tests build on earlier ones
            if name.startswith("test_"):
                test(self)
        print(f"{self.passed} passed, {self.failed} failed")
        return self.failed == 0


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    smoke = Smoke(load(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    return 0 if smoke.run() else 1


if __name__ == "__main__":
    sys.exit(main())
