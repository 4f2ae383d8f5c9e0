//! A `hyper::rt::Timer` for HTTP/2 keep-alive pings of outbound connections.
//!
//! hyper's `Sleep` must be `Send + Sync`, which glommio's per-core timers are not, so sleeps are kept in
//! one process-wide timer thread (a binary heap of deadlines, woken through a condvar). It serves only
//! keep-alive pings — a handful of timers per connection every tens of seconds — never a hot path.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The shared timer (cheap to clone).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadTimer;

struct Shared {
    fired: bool,
    waker: Option<Waker>,
}

struct Entry {
    deadline: Instant,
    shared: Arc<Mutex<Shared>>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.deadline.cmp(&other.deadline)
    }
}

struct Wheel {
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
}

fn wheel() -> &'static Wheel {
    static WHEEL: OnceLock<&'static Wheel> = OnceLock::new();
    WHEEL.get_or_init(|| {
        let wheel: &'static Wheel = Box::leak(Box::new(Wheel {
            heap: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("restate-timer".into())
            .spawn(move || run(wheel))
            .expect("timer thread");
        wheel
    })
}

fn run(wheel: &'static Wheel) {
    let mut heap = wheel.heap.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
            let Reverse(entry) = heap.pop().expect("peeked");
            let mut shared = entry.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.fired = true;
            if let Some(waker) = shared.waker.take() {
                waker.wake();
            }
        }
        heap = match heap.peek().map(|Reverse(e)| e.deadline) {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                wheel
                    .changed
                    .wait_timeout(heap, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => wheel.changed.wait(heap).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// A sleep until a deadline.
pub struct ThreadSleep {
    shared: Arc<Mutex<Shared>>,
}

impl ThreadSleep {
    fn until(deadline: Instant) -> ThreadSleep {
        let shared = Arc::new(Mutex::new(Shared {
            fired: deadline <= Instant::now(),
            waker: None,
        }));
        let wheel = wheel();
        wheel
            .heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse(Entry {
                deadline,
                shared: shared.clone(),
            }));
        wheel.changed.notify_one();
        ThreadSleep { shared }
    }
}

impl Future for ThreadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.fired {
            Poll::Ready(())
        } else {
            shared.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for ThreadSleep {}

impl hyper::rt::Timer for ThreadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ThreadSleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ThreadSleep::until(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_fire_in_deadline_order_and_not_before() {
        let started = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = [60u64, 20, 40]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                std::thread::spawn(move || {
                    futures_lite::future::block_on(ThreadSleep::until(
                        started + Duration::from_millis(ms),
                    ));
                    assert!(started.elapsed() >= Duration::from_millis(ms));
                    order.lock().unwrap().push(ms);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![20, 40, 60]);
    }
}
