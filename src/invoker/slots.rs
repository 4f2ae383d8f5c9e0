//! The invoker's concurrency slots: at most `worker.invoker.concurrency_limit` attempts of one core run
//! at once. Attempts that wait for a slot are served round-robin by service, first come first served
//! within a service, so a backlog of one service's invocations (thousands of queued transfers, say)
//! does not put another service's calls behind all of it — the calls that backlog waits on included.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use futures::channel::oneshot;

/// The slots of one core. Single-threaded (one per core).
#[derive(Debug)]
pub struct Slots {
    inner: RefCell<Inner>,
}

#[derive(Debug)]
struct Inner {
    free: usize,
    /// Waiters per service, in arrival order.
    queues: HashMap<Rc<str>, VecDeque<oneshot::Sender<()>>>,
    /// Services with waiters, in the order they are served next.
    ring: VecDeque<Rc<str>>,
}

impl Slots {
    /// `limit` slots, all free.
    pub fn new(limit: usize) -> Slots {
        Slots {
            inner: RefCell::new(Inner {
                free: limit,
                queues: HashMap::new(),
                ring: VecDeque::new(),
            }),
        }
    }

    /// Takes a slot if one is free and nobody waits (the common case: no channel, no service name).
    /// The holder must [`release`](Self::release) it.
    pub fn try_acquire(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.free > 0 && inner.ring.is_empty() {
            inner.free -= 1;
            return true;
        }
        false
    }

    /// Asks for a slot for an attempt of `service`; the receiver fires once it holds one (at once when
    /// one is free and nobody waits). The holder must [`release`](Self::release) it.
    pub fn acquire(&self, service: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner.borrow_mut();
            if inner.free > 0 && inner.ring.is_empty() {
                // Nobody waits: no queue to pass through (the channel still costs an allocation;
                // the invoker calls `try_acquire` first).
                inner.free -= 1;
                let _ = tx.send(());
                return rx;
            }
            match inner.queues.get_mut(service) {
                Some(queue) => queue.push_back(tx),
                None => {
                    let service: Rc<str> = Rc::from(service);
                    inner.queues.insert(service.clone(), VecDeque::from([tx]));
                    inner.ring.push_back(service);
                }
            }
        }
        self.dispatch();
        rx
    }

    /// Gives a slot back: the next waiter (round-robin by service) gets it.
    pub fn release(&self) {
        self.inner.borrow_mut().free += 1;
        self.dispatch();
    }

    /// Hands free slots to waiters; waiters that gave up are skipped.
    fn dispatch(&self) {
        let mut inner = self.inner.borrow_mut();
        while inner.free > 0 {
            let Some(waiter) = inner.next_waiter() else {
                return;
            };
            if waiter.send(()).is_ok() {
                inner.free -= 1;
            }
        }
    }
}

impl Inner {
    fn next_waiter(&mut self) -> Option<oneshot::Sender<()>> {
        let service = self.ring.pop_front()?;
        let queue = self.queues.get_mut(&service)?;
        let waiter = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&service);
        } else {
            self.ring.push_back(service);
        }
        waiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(rx: &mut oneshot::Receiver<()>) -> bool {
        matches!(rx.try_recv(), Ok(Some(())))
    }

    #[test]
    fn free_slots_are_granted_at_once_then_waiters_queue() {
        let slots = Slots::new(2);
        let mut a = slots.acquire("bank");
        let mut b = slots.acquire("bank");
        let mut c = slots.acquire("bank");
        assert!(granted(&mut a) && granted(&mut b));
        assert!(!granted(&mut c));
        slots.release();
        assert!(granted(&mut c));
    }

    #[test]
    fn try_acquire_takes_a_free_slot_only_while_nobody_waits() {
        let slots = Slots::new(2);
        assert!(slots.try_acquire());
        assert!(slots.try_acquire());
        assert!(!slots.try_acquire(), "none free");
        let mut waiter = slots.acquire("bank");
        slots.release();
        assert!(granted(&mut waiter), "the freed slot goes to the waiter");
        assert!(!slots.try_acquire());
        slots.release();
        let mut blocked = slots.acquire("bank");
        assert!(granted(&mut blocked));
        let mut queued = slots.acquire("bank");
        slots.inner.borrow_mut().free += 1; // a slot freed while `queued` still waits
        assert!(!slots.try_acquire(), "no jumping the queue");
        assert!(!granted(&mut queued));
    }

    #[test]
    fn waiters_are_served_round_robin_by_service() {
        let slots = Slots::new(1);
        let mut holder = slots.acquire("bank");
        assert!(granted(&mut holder));
        let mut backlog: Vec<_> = (0..5).map(|_| slots.acquire("bank")).collect();
        let mut call = slots.acquire("counter");
        slots.release();
        assert!(granted(&mut backlog[0]), "first come first served...");
        slots.release();
        assert!(
            granted(&mut call),
            "...but the other service is next, not behind the backlog"
        );
        slots.release();
        assert!(granted(&mut backlog[1]));
    }

    #[test]
    fn waiters_that_gave_up_do_not_take_slots() {
        let slots = Slots::new(1);
        let mut holder = slots.acquire("a");
        assert!(granted(&mut holder));
        drop(slots.acquire("a"));
        let mut next = slots.acquire("b");
        slots.release();
        assert!(granted(&mut next));
        slots.release();
        let mut free = slots.acquire("c");
        assert!(
            granted(&mut free),
            "the slot the gone waiter skipped is free"
        );
    }
}
