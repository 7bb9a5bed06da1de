//! AES-GCM nonces, 96 random bits each from the operating system's CSPRNG,
//! drawn a pool at a time instead of one system call per record. A
//! `getrandom` call costs about half a microsecond here, as much as the
//! AES-GCM of a few hundred bytes; a pool of 341 nonces per call makes it
//! vanish from the per-record cost (docs/benchmarks.md, issue 15).
//!
//! The pool is per thread, and every nonce is handed out once and then
//! wiped from it, so no two encryptions of this process share one. keyseal
//! never forks without exec (a forked copy of the pool is the one way two
//! processes could draw the same nonces).

use std::cell::RefCell;

use super::data_key::NONCE_LEN;

/// Nonces per pool refill: a 4 KiB read from the CSPRNG.
const PER_REFILL: usize = 4096 / NONCE_LEN;

struct Pool {
    bytes: [u8; PER_REFILL * NONCE_LEN],
    next: usize,
}

thread_local! {
    static POOL: RefCell<Pool> =
        const { RefCell::new(Pool { bytes: [0; PER_REFILL * NONCE_LEN], next: PER_REFILL * NONCE_LEN }) };
}

/// A fresh random nonce, never handed out before.
pub fn fresh() -> [u8; NONCE_LEN] {
    POOL.with_borrow_mut(|pool| {
        if pool.next == pool.bytes.len() {
            getrandom::fill(&mut pool.bytes).expect("the operating system's CSPRNG");
            pool.next = 0;
        }
        let slot = &mut pool.bytes[pool.next..pool.next + NONCE_LEN];
        let nonce: [u8; NONCE_LEN] = slot.try_into().expect("NONCE_LEN bytes");
        slot.fill(0);
        pool.next += NONCE_LEN;
        nonce
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nonces_never_repeat_across_refills_and_threads() {
        let draw = || (0..PER_REFILL * 5 + 7).map(|_| fresh()).collect::<Vec<_>>();
        let other = std::thread::spawn(draw);
        let mut seen = HashSet::new();
        for nonce in draw().into_iter().chain(other.join().unwrap()) {
            assert_ne!(nonce, [0; NONCE_LEN], "a wiped slot was handed out");
            assert!(seen.insert(nonce), "a nonce was handed out twice");
        }
    }
}
