//! The panic boundary and the pointer checks every exported function goes through.
//!
//! No panic may unwind into C and no pointer from C is used before it is checked for NULL.
//! This module must never dereference a pointer it has not checked, and never write an
//! out-parameter before the call has succeeded.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

use crate::ffi::error::{
    FfiError, NPS_NULL_ARGUMENT, NPS_OK, NPS_PANIC, NPS_WRONG_THREAD, clear_last_error, set_last_error,
};

/// Runs `body`, turning its result or panic into a result code and the thread's last error.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), FfiError>) -> u32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            NPS_OK
        }
        Ok(Err(error)) => {
            set_last_error(&error);
            error.code
        }
        Err(payload) => {
            set_last_error(&panic_error(payload.as_ref()));
            NPS_PANIC
        }
    }
}

/// Runs `body` for a function that returns a value instead of a code; a panic gives `fallback`.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        set_last_error(&panic_error(payload.as_ref()));
        fallback
    })
}

fn panic_error(payload: &(dyn Any + Send)) -> FfiError {
    FfiError::new(NPS_PANIC, format!("internal error (panic): {}", crate::error::panic_message(payload)))
}

/// A shared reference to the object behind a pointer argument named `name`.
///
/// # Safety
/// `pointer` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn ref_arg<'a, T>(pointer: *const T, name: &str) -> Result<&'a T, FfiError> {
    // SAFETY: the caller promises a NULL or live pointer; NULL is refused here.
    unsafe { pointer.as_ref() }.ok_or_else(|| null_argument(name))
}

/// An out-parameter, checked for NULL up front and written only once the call succeeded.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Checks the out-parameter named `name`.
    pub fn new(pointer: *mut T, name: &str) -> Result<Self, FfiError> {
        NonNull::new(pointer).map(Self).ok_or_else(|| null_argument(name))
    }

    /// Writes the result.
    ///
    /// # Safety
    /// The pointer given to [`Out::new`] is valid for a write of `T`.
    pub unsafe fn write(self, value: T) {
        // SAFETY: not NULL (checked in `new`); the caller promises it is writable.
        unsafe { self.0.as_ptr().write(value) }
    }
}

fn null_argument(name: &str) -> FfiError {
    FfiError::new(NPS_NULL_ARGUMENT, format!("`{name}` is NULL"))
}

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `call` marked as a host callback, so calls that would wait for this thread can refuse.
pub(crate) fn in_callback<R>(call: impl FnOnce() -> R) -> R {
    let outer = IN_CALLBACK.with(|flag| flag.replace(true));
    let result = call();
    IN_CALLBACK.with(|flag| flag.set(outer));
    result
}

/// Whether the calling thread is inside a host callback.
pub(crate) fn is_in_callback() -> bool {
    IN_CALLBACK.with(Cell::get)
}

/// Refuses `what` when it is attempted from inside a host callback.
pub(crate) fn not_in_callback(what: &str) -> Result<(), FfiError> {
    if is_in_callback() {
        return Err(FfiError::new(NPS_WRONG_THREAD, format!("{what} may not be called from inside a callback")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{NPS_INVALID_ARGUMENT, last_error};

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, NPS_PANIC);
        assert!(last_error().unwrap().to_str().unwrap().contains("boom"));
        assert_eq!(guard(|| Ok(())), NPS_OK);
        assert!(last_error().is_none());
    }

    #[test]
    fn an_error_keeps_its_code() {
        assert_eq!(guard(|| Err(FfiError::new(NPS_INVALID_ARGUMENT, "filter 9"))), NPS_INVALID_ARGUMENT);
        assert_eq!(last_error().unwrap().to_str().unwrap(), "filter 9");
    }

    #[test]
    fn null_pointers_are_refused() {
        assert_eq!(unsafe { ref_arg::<u8>(std::ptr::null(), "handle") }.unwrap_err().code, NPS_NULL_ARGUMENT);
        assert_eq!(Out::<u8>::new(std::ptr::null_mut(), "out").err().unwrap().code, NPS_NULL_ARGUMENT);
        let mut value = 0_u8;
        unsafe { Out::new(&mut value, "out").unwrap().write(7) };
        assert_eq!(value, 7);
    }

    #[test]
    fn callbacks_are_marked() {
        assert!(not_in_callback("close").is_ok());
        let refused = in_callback(|| not_in_callback("close"));
        assert_eq!(refused.unwrap_err().code, NPS_WRONG_THREAD);
        assert!(not_in_callback("close").is_ok());
    }
}
