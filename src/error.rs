//! What every library error says about itself besides its message: a
//! stable snake_case code (for logs, API bodies and metric labels; it never
//! carries data) and whether trying the same thing again later can succeed.
//! Each error implements it beside its own definition (as TiKV's
//! `components/encryption/src/errors.rs` does); this trait is all that is
//! shared. Callers decide what follows from a code (the admin API alone
//! turns codes into HTTP statuses).

/// A stable code and a retry hint, like TiKV's `ErrorCodeExt`.
pub trait ErrorCode {
    /// The stable snake_case name of this kind of failure.
    fn code(&self) -> &'static str;
    /// Whether the same operation may succeed later without anyone
    /// changing anything (a vault or disk that comes back, a throttle that
    /// lifts); `false` means someone must act first (enable a key, restore
    /// a file, fix a request).
    fn is_retryable(&self) -> bool;
}
