//! Strings that cross the C boundary: C strings in, library-owned UTF-8 strings out.
//!
//! Every string handed to C is allocated here and must come back through `nps_string_free`;
//! this module never frees a pointer it did not allocate with [`into_c_string`].

use std::ffi::{CStr, CString, c_char};

use crate::ffi::error::{FfiError, NPS_INVALID_UTF8, NPS_NULL_ARGUMENT};

/// Makes a C string of `text`, replacing any interior NUL with U+FFFD so nothing is cut short.
pub(crate) fn to_c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|error| {
        let cleaned = String::from_utf8_lossy(&error.into_vec()).replace('\0', "\u{FFFD}");
        CString::new(cleaned).unwrap_or_default()
    })
}

/// Hands `text` to C as a library-owned string.
pub(crate) fn into_c_string(text: String) -> *mut c_char {
    to_c_string(text).into_raw()
}

/// Releases a string made by [`into_c_string`]; NULL is ignored.
///
/// # Safety
/// `text` is NULL or came from [`into_c_string`] and was not freed before.
pub(crate) unsafe fn free_c_string(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: the caller promises `text` came from `CString::into_raw` and is freed once.
        drop(unsafe { CString::from_raw(text) });
    }
}

/// Reads a NUL-terminated UTF-8 argument named `name`.
///
/// # Safety
/// `text` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(text: *const c_char, name: &str) -> Result<&'a str, FfiError> {
    if text.is_null() {
        return Err(FfiError::new(NPS_NULL_ARGUMENT, format!("`{name}` is NULL")));
    }
    // SAFETY: checked for NULL above; the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(text) };
    bytes.to_str().map_err(|error| FfiError::new(NPS_INVALID_UTF8, format!("`{name}` is not valid UTF-8: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_nul_is_replaced_not_truncated() {
        let text = to_c_string("a\0b".to_owned());
        assert_eq!(text.to_str().unwrap(), "a\u{FFFD}b");
    }

    #[test]
    fn str_arg_checks_null_and_utf8() {
        let bad = c"\xff\xfe";
        let error = unsafe { str_arg(bad.as_ptr(), "path") }.unwrap_err();
        assert_eq!(error.code, NPS_INVALID_UTF8);
        let error = unsafe { str_arg(std::ptr::null(), "path") }.unwrap_err();
        assert_eq!(error.code, NPS_NULL_ARGUMENT);
        assert_eq!(unsafe { str_arg(c"ok".as_ptr(), "path") }.unwrap(), "ok");
    }

    #[test]
    fn round_trip_through_c() {
        let raw = into_c_string("{\"type\":\"closed\"}".to_owned());
        assert_eq!(unsafe { str_arg(raw, "json") }.unwrap(), "{\"type\":\"closed\"}");
        unsafe { free_c_string(raw) };
        unsafe { free_c_string(std::ptr::null_mut()) };
    }
}
