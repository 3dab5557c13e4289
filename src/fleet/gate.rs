//! The request gate: lets a fence wait until every tenant request that may have used state
//! older than a change has finished, without a lock that requests contend for.
//!
//! Requests count themselves in one of two slots chosen by the current generation. A quiesce
//! moves the generation on (new requests count in the other slot) and waits for the old slot
//! to empty. A request re-reads the generation after counting itself, so it can never slip
//! into a slot that a quiesce has already found empty.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts in-flight tenant requests by generation.
#[derive(Default)]
pub struct RequestGate {
    generation: AtomicU64,
    inflight: [AtomicI64; 2],
    /// The slot a quiesce is draining; kept when it gave up, so the next one waits for the
    /// same requests rather than moving on past them.
    quiescing: tokio::sync::Mutex<Option<usize>>,
}

/// Held by a request for as long as it may use tenant state it resolved.
pub struct GateGuard {
    gate: Arc<RequestGate>,
    slot: usize,
}

impl GateGuard {
    /// Another guard in the same slot, for work that may outlive this one (a store write
    /// that goes on after its request timed out).
    pub fn hold(&self) -> GateGuard {
        self.gate.inflight[self.slot].fetch_add(1, Ordering::SeqCst);
        GateGuard {
            gate: self.gate.clone(),
            slot: self.slot,
        }
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.gate.inflight[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

impl RequestGate {
    /// Counts a request in; resolve tenant state only after this.
    pub fn enter(self: &Arc<Self>) -> GateGuard {
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            let slot = (generation & 1) as usize;
            self.inflight[slot].fetch_add(1, Ordering::SeqCst);
            if self.generation.load(Ordering::SeqCst) == generation {
                return GateGuard {
                    gate: self.clone(),
                    slot,
                };
            }
            // A quiesce moved on between the two reads: count in the new slot instead.
            self.inflight[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Returns once every request that entered before this call has left. Invalidate caches
    /// first: requests entering afterwards then see the new state.
    pub async fn quiesce(&self) {
        while !self.quiesce_within(Duration::from_secs(3600)).await {}
    }

    /// Like [`Self::quiesce`] for at most `limit`; false if requests are still running (a
    /// store call that hangs). The next call goes on waiting for those same requests.
    pub async fn quiesce_within(&self, limit: Duration) -> bool {
        let mut draining = self.quiescing.lock().await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // A slot kept by a quiesce that gave up (or was cancelled, as a fence under a
            // timeout is) holds only the requests from before that one: once it is empty,
            // the requests that entered since must be waited for as well, so this goes on
            // with a fresh generation.
            let (slot, kept) = match *draining {
                Some(slot) => (slot, true),
                None => {
                    let old = (self.generation.fetch_add(1, Ordering::SeqCst) & 1) as usize;
                    *draining = Some(old);
                    (old, false)
                }
            };
            while self.inflight[slot].load(Ordering::SeqCst) > 0 {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            *draining = None;
            if !kept {
                return true;
            }
        }
    }

    /// Requests in flight (both slots).
    pub fn in_flight(&self) -> i64 {
        self.inflight[0].load(Ordering::SeqCst) + self.inflight[1].load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quiesce_waits_for_earlier_requests_only() {
        let gate = Arc::new(RequestGate::default());
        let early = gate.enter();
        let q = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.quiesce().await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A request entering after the quiesce started does not hold it up.
        let late = gate.enter();
        assert!(
            !q.is_finished(),
            "quiesce returned while an earlier request was in flight"
        );
        drop(early);
        tokio::time::timeout(Duration::from_secs(2), q)
            .await
            .expect("quiesce finished")
            .unwrap();
        assert_eq!(gate.in_flight(), 1);
        drop(late);
        gate.quiesce().await;
        assert_eq!(gate.in_flight(), 0);
    }

    /// A quiesce that gave up keeps waiting for the same requests: a later one does not
    /// move past a request that is still running.
    #[tokio::test]
    async fn a_timed_out_quiesce_never_skips_a_stuck_request() {
        let gate = Arc::new(RequestGate::default());
        let stuck = gate.enter();
        assert!(!gate.quiesce_within(Duration::from_millis(20)).await);
        let later = gate.enter();
        drop(later);
        assert!(
            !gate.quiesce_within(Duration::from_millis(20)).await,
            "a second quiesce moved past the stuck request"
        );
        drop(stuck);
        assert!(gate.quiesce_within(Duration::from_millis(200)).await);
    }

    /// After a quiesce gave up, the next one waits for the requests that entered in between
    /// too, not only for those the first one was waiting for.
    #[tokio::test]
    async fn a_quiesce_after_a_timed_out_one_waits_for_later_requests_too() {
        let gate = Arc::new(RequestGate::default());
        let stuck = gate.enter();
        assert!(!gate.quiesce_within(Duration::from_millis(20)).await);
        let between = gate.enter();
        drop(stuck);
        assert!(
            !gate.quiesce_within(Duration::from_millis(50)).await,
            "a quiesce returned while a request that entered before it was in flight"
        );
        drop(between);
        assert!(gate.quiesce_within(Duration::from_millis(200)).await);
        // A quiesce cancelled mid-wait (a fence under a timeout) is no different.
        let stuck = gate.enter();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), gate.quiesce())
                .await
                .is_err()
        );
        let between = gate.enter();
        drop(stuck);
        assert!(!gate.quiesce_within(Duration::from_millis(50)).await);
        drop(between);
        assert!(gate.quiesce_within(Duration::from_millis(200)).await);
    }

    #[test]
    fn many_threads_never_lose_count() {
        let gate = Arc::new(RequestGate::default());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (gate, stop) = (gate.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        drop(gate.enter());
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            rt.block_on(gate.quiesce());
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(gate.in_flight(), 0);
    }
}
