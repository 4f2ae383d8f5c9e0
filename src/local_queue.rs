//! A FIFO between the tasks of one executor: a `VecDeque` behind an `Rc`.
//!
//! futures' `mpsc::unbounded` allocates a node for every message and synchronises with atomics across
//! threads; the queues inside a core (a processor's durable transitions, its ordered storage path, an
//! attempt's completions) never leave their executor, and they carry a few messages per invocation.
//! This one allocates only when its buffer grows and uses no atomics.
//!
//! Like `mpsc::unbounded`, it has no bound of its own: every user bounds it by what may be in flight
//! on the core (see each user's docs).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Shared<T> {
    queue: VecDeque<T>,
    /// The receiver's task, while it waits for a message.
    waker: Option<Waker>,
    senders: usize,
    receiver_alive: bool,
}

/// The sending half; cloneable.
pub struct Sender<T>(Rc<RefCell<Shared<T>>>);

/// The receiving half: messages in the order they were sent; `None` once every sender is gone and
/// the queue is drained.
pub struct Receiver<T>(Rc<RefCell<Shared<T>>>);

/// A new, empty queue.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Rc::new(RefCell::new(Shared {
        queue: VecDeque::new(),
        waker: None,
        senders: 1,
        receiver_alive: true,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item`; gives it back when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut shared = self.0.borrow_mut();
            if !shared.receiver_alive {
                return Err(item);
            }
            shared.queue.push_back(item);
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.0.borrow_mut();
            shared.senders -= 1;
            if shared.senders > 0 {
                return;
            }
            shared.waker.take()
        };
        // The last sender: a waiting receiver learns that the queue is closed.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.borrow_mut().queue.pop_front()
    }

    /// The next message, waiting for one; `None` once the queue is closed and drained.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut shared = self.0.borrow_mut();
        if let Some(item) = shared.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if shared.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut shared.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> futures::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Dropped outside the borrow: a message's drop may send on this queue again.
        let queued = {
            let mut shared = self.0.borrow_mut();
            shared.receiver_alive = false;
            shared.waker = None;
            std::mem::take(&mut shared.queue)
        };
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn on_executor<F: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .expect("executor")
            .join()
            .expect("test task");
    }

    #[test]
    fn messages_arrive_in_order_and_the_queue_closes_with_its_last_sender() {
        on_executor(|| async {
            let (tx, mut rx) = unbounded();
            let tx2 = tx.clone();
            tx.send(1).unwrap();
            tx2.send(2).unwrap();
            assert_eq!(rx.try_recv(), Some(1));
            drop(tx);
            tx2.send(3).unwrap();
            assert_eq!(rx.recv().await, Some(2));
            assert_eq!(rx.next().await, Some(3));
            assert_eq!(rx.try_recv(), None);
            drop(tx2);
            assert_eq!(rx.recv().await, None, "closed and drained");
        });
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_close() {
        on_executor(|| async {
            let (tx, mut rx) = unbounded::<u32>();
            let waiter = glommio::spawn_local(async move {
                let first = rx.recv().await;
                let second = rx.recv().await;
                (first, second)
            });
            glommio::yield_if_needed().await;
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            tx.send(7).unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            drop(tx);
            // Bounded: a lost wake-up fails the test instead of hanging it.
            let woken = glommio::timer::timeout(std::time::Duration::from_secs(5), async {
                Ok(waiter.await)
            })
            .await;
            assert_eq!(woken.expect("woken within 5 s"), (Some(7), None));
        });
    }

    #[test]
    fn a_send_after_the_receiver_is_gone_gives_the_message_back() {
        on_executor(|| async {
            let (tx, rx) = unbounded();
            tx.send(String::from("queued")).unwrap();
            drop(rx);
            assert_eq!(tx.send(String::from("late")), Err(String::from("late")));
        });
    }

    #[test]
    fn a_queued_message_whose_drop_sends_again_does_not_panic() {
        struct Resend(Sender<Option<Resend>>);
        impl Drop for Resend {
            fn drop(&mut self) {
                let _ = self.0.send(None);
            }
        }
        on_executor(|| async {
            let (tx, rx) = unbounded();
            assert!(tx.send(Some(Resend(tx.clone()))).is_ok());
            drop(rx);
        });
    }
}
