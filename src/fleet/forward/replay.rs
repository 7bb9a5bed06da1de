//! Remembers the forwarded requests a worker has accepted until they
//! expire, so a captured request cannot be run twice: a signature proves
//! who sent a request, not that it is the first time it arrives.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most request ids remembered at once. A worker accepts only requests
/// signed by the deployment, which live at most `MAX_LIFETIME`, so this is
/// far above what honest workers send; past it, new requests are refused
/// (503) rather than memory growing.
pub const MAX_REMEMBERED: usize = 100_000;

/// What [`ReplayGuard::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First time seen: run it.
    Fresh,
    /// Seen before and not yet expired: a replay.
    Replayed,
    /// Too many requests remembered to tell: refuse for now.
    Full,
}

/// The ids of accepted requests, each until its expiry.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<String, i64>,
    /// Size at which expired ids are next dropped.
    prune_at: usize,
}

impl ReplayGuard {
    /// Admits request `id`, valid until `until_ms`, at `now_ms`.
    pub fn admit(&self, id: &str, until_ms: i64, now_ms: i64) -> Admission {
        let mut seen = self.seen.lock().expect("replay guard lock");
        if seen.until.len() >= seen.prune_at.min(MAX_REMEMBERED) {
            seen.until.retain(|_, until| *until >= now_ms);
            seen.prune_at = (2 * seen.until.len()).max(1024);
        }
        match seen.until.get(id) {
            Some(until) if *until >= now_ms => return Admission::Replayed,
            _ => {}
        }
        if seen.until.len() >= MAX_REMEMBERED {
            return Admission::Full;
        }
        seen.until.insert(id.to_owned(), until_ms);
        Admission::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_refused_until_it_expires() {
        let guard = ReplayGuard::default();
        assert_eq!(guard.admit("a", 100, 0), Admission::Fresh);
        assert_eq!(guard.admit("a", 100, 50), Admission::Replayed);
        assert_eq!(guard.admit("b", 100, 50), Admission::Fresh);
        assert_eq!(guard.admit("a", 300, 101), Admission::Fresh, "expired ids are forgotten");
    }

    #[test]
    fn memory_is_bounded() {
        let guard = ReplayGuard::default();
        for i in 0..MAX_REMEMBERED {
            assert_eq!(guard.admit(&i.to_string(), 10, 0), Admission::Fresh);
        }
        assert_eq!(guard.admit("one more", 10, 0), Admission::Full);
        assert_eq!(guard.admit("later", 30, 11), Admission::Fresh, "expired ids make room");
    }
}
