//! Tasks that drive invocations, kept for the next invocation once theirs ends.
//!
//! Spawning a task per invocation allocates its future: the attempt loop's is ~1.9 KB, past glibc's
//! per-thread cache, so every spawn took malloc's slow path (and consolidated the arena's fast bins).
//! A driver whose invocation ended parks here instead, and the next invocation is handed to it: its
//! future, allocated once, runs the next attempt loop in place. At most `limit` drivers park
//! (`worker.invoker.concurrency_limit`); one that finds the lot full ends.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One parked driver's mailbox.
pub(super) struct Handoff<J> {
    job: Cell<Option<J>>,
    waker: Cell<Option<Waker>>,
}

impl<J> Default for Handoff<J> {
    fn default() -> Self {
        Handoff {
            job: Cell::new(None),
            waker: Cell::new(None),
        }
    }
}

/// The parked drivers of one core.
pub(super) struct Parked<J> {
    drivers: RefCell<Vec<Rc<Handoff<J>>>>,
    limit: usize,
}

impl<J> Parked<J> {
    /// Keeps at most `limit` drivers parked.
    pub fn new(limit: usize) -> Self {
        Parked {
            drivers: RefCell::new(Vec::new()),
            limit,
        }
    }

    /// Hands `job` to the driver parked last (its memory is the likeliest to be in cache) and wakes
    /// it; gives `job` back when none is parked.
    pub fn hand(&self, job: J) -> Result<(), J> {
        let Some(driver) = self.drivers.borrow_mut().pop() else {
            return Err(job);
        };
        driver.job.set(Some(job));
        if let Some(waker) = driver.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Parks the driver whose mailbox is `handoff` until a job is handed to it; `None` when `limit`
    /// drivers are parked already (the caller's task ends instead).
    pub fn park<'a>(&self, handoff: &'a Rc<Handoff<J>>) -> Option<NextJob<'a, J>> {
        let mut drivers = self.drivers.borrow_mut();
        if drivers.len() >= self.limit {
            return None;
        }
        drivers.push(handoff.clone());
        Some(NextJob(handoff))
    }

    /// How many drivers are parked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.drivers.borrow().len()
    }
}

/// A parked driver's wait for its next job.
pub(super) struct NextJob<'a, J>(&'a Handoff<J>);

impl<J> Future for NextJob<'_, J> {
    type Output = J;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<J> {
        match self.0.job.take() {
            Some(job) => Poll::Ready(job),
            None => {
                self.0.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets every other runnable task run a few times.
    async fn let_others_run() {
        for _ in 0..4 {
            futures_lite::future::yield_now().await;
        }
    }

    /// A driver: runs jobs (pushing them to `ran` with its number) until the lot is full.
    async fn driver(
        number: usize,
        parked: Rc<Parked<u32>>,
        ran: Rc<RefCell<Vec<(usize, u32)>>>,
        mut job: u32,
    ) {
        let handoff = Rc::new(Handoff::default());
        loop {
            ran.borrow_mut().push((number, job));
            futures_lite::future::yield_now().await;
            match parked.park(&handoff) {
                Some(next) => job = next.await,
                None => return,
            }
        }
    }

    #[test]
    fn parked_drivers_take_the_next_jobs_and_the_lot_is_bounded() {
        glommio::LocalExecutor::default().run(async {
            let parked = Rc::new(Parked::new(2));
            let ran = Rc::new(RefCell::new(Vec::new()));
            let mut spawned = 0;
            let mut start = |job: u32| {
                if let Err(job) = parked.hand(job) {
                    spawned += 1;
                    glommio::spawn_local(driver(spawned, parked.clone(), ran.clone(), job))
                        .detach();
                }
            };
            // Three at once: nobody is parked, so three drivers start.
            for job in 0..3 {
                start(job);
            }
            let_others_run().await;
            // Two parked; the third found the lot full and ended.
            assert_eq!(parked.len(), 2);
            // The next two jobs go to the parked drivers, the last parked first; the third
            // needs a new driver.
            for job in 3..6 {
                start(job);
            }
            let_others_run().await;
            assert_eq!(spawned, 4);
            let ran = ran.borrow();
            let mut later: Vec<_> = ran[3..].to_vec();
            later.sort_by_key(|(_, job)| *job);
            assert_eq!(later, vec![(2, 3), (1, 4), (4, 5)]);
            assert_eq!(parked.len(), 2);
        });
    }
}
