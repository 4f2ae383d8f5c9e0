//! Adapts glommio's `futures` IO to hyper's IO traits, recording activity for the connection's
//! watchdog (idle and header read timeouts).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

/// Most bytes one read asks for.
const MAX_READ_BYTES: usize = 64 * 1024;

/// What the watchdog of a connection looks at: requests being handled, responses being sent, when the
/// connection went idle, and whether bytes of a next request have arrived since.
pub struct Activity {
    /// When the connection last had no request in flight (opened, or its last request answered).
    idle_since: Cell<Instant>,
    /// The first byte received since the connection went idle: a request head (or HTTP/2 frames) is
    /// on its way and must complete within the header read timeout.
    head_started: Cell<Option<Instant>>,
    /// When bytes last arrived.
    last_read: Cell<Instant>,
    /// When bytes were last sent.
    last_write: Cell<Instant>,
    /// Requests being handled right now: a connection waiting on a response is not idle.
    in_flight: Cell<usize>,
    /// Responses whose bodies are being sent.
    streaming: Cell<usize>,
    /// The watchdog waiting for a change of state.
    waiter: Cell<Option<Waker>>,
}

/// Where a connection stands, for its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// At least one request is being handled.
    Busy,
    /// No request is being handled, but responses are being sent: bytes must keep moving.
    Streaming,
    /// Nothing in flight and nothing received since `since`.
    Idle { since: Instant },
    /// Nothing in flight, but bytes of a next request arrived from `since` on.
    ReadingHead { since: Instant },
}

impl Activity {
    /// A fresh connection is idle from now.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            idle_since: Cell::new(Instant::now()),
            last_read: Cell::new(Instant::now()),
            last_write: Cell::new(Instant::now()),
            head_started: Cell::new(None),
            in_flight: Cell::new(0),
            streaming: Cell::new(0),
            waiter: Cell::new(None),
        })
    }

    /// Marks a request in flight until the guard drops.
    pub fn enter(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        self.head_started.set(None);
        InFlight(self.clone())
    }

    /// The connection's state now.
    pub fn state(&self) -> State {
        match (
            self.in_flight.get(),
            self.streaming.get(),
            self.head_started.get(),
        ) {
            (0, 0, Some(since)) => State::ReadingHead { since },
            (0, 0, None) => State::Idle {
                since: self.idle_since.get(),
            },
            (0, _, _) => State::Streaming,
            _ => State::Busy,
        }
    }

    /// When bytes last arrived (a quiet connection is idle even in the middle of a request head).
    pub fn last_read(&self) -> Instant {
        self.last_read.get()
    }

    /// When bytes last moved either way.
    pub fn last_progress(&self) -> Instant {
        self.last_read.get().max(self.last_write.get())
    }

    /// Completes at the next change of [`Activity::state`] (the watchdog re-reads it then).
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + '_ {
        let before = self.state();
        std::future::poll_fn(move |cx| {
            if self.state() != before {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }

    fn wake(&self) {
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    fn on_read(&self) {
        self.last_read.set(Instant::now());
        if self.in_flight.get() == 0
            && self.streaming.get() == 0
            && self.head_started.get().is_none()
        {
            self.head_started.set(Some(Instant::now()));
            self.wake();
        }
    }

    /// After a request handler or a response body ended: wakes the watchdog when the state changed.
    fn left(&self) {
        if self.in_flight.get() == 0 {
            if self.streaming.get() == 0 {
                // A finished request restarts the idle clock.
                self.idle_since.set(Instant::now());
                self.head_started.set(None);
            }
            self.wake();
        }
    }
}

/// A request being handled on a connection.
pub struct InFlight(Rc<Activity>);

impl InFlight {
    /// The handler is done; its response body is being sent until the returned guard drops.
    pub fn into_streaming(self) -> Streaming {
        let activity = self.0.clone();
        activity.streaming.set(activity.streaming.get() + 1);
        drop(self);
        Streaming(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.left();
    }
}

/// A response body being sent on a connection.
pub struct Streaming(Rc<Activity>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.streaming.set(self.0.streaming.get() - 1);
        self.0.left();
    }
}

/// A response body that marks its connection as streaming until it is sent (or dropped): what the
/// client sends meanwhile (HTTP/2 window updates) is not the start of a next request head, and the
/// connection is closed only when no bytes move either way for the idle timeout (a client that stops
/// reading).
pub struct InFlightBody<B> {
    inner: B,
    _streaming: Streaming,
}

impl<B> InFlightBody<B> {
    /// Holds `in_flight`, turned into a [`Streaming`] guard, as long as `inner` lives.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _streaming: in_flight.into_streaming(),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// hyper IO over any `futures` stream (glommio's `TcpStream`).
pub struct Io<T> {
    inner: T,
    activity: Rc<Activity>,
    /// The first write of a flush was put off once (see [`hyper::rt::Write`] below).
    deferred: bool,
}

impl<T> Io<T> {
    /// Wraps a stream.
    pub fn new(inner: T, activity: Rc<Activity>) -> Self {
        Self {
            inner,
            activity,
            deferred: false,
        }
    }
}

/// Writes put off until the core has run every task that was ready when the first of them was put
/// off: each connection then sends what all of them queued in one `send` instead of one per response.
struct WriteBehind {
    /// The connections waiting for the end of the round.
    waiting: std::cell::RefCell<Vec<Waker>>,
    /// The flusher task, parked while nothing waits.
    flusher: Cell<Option<Waker>>,
}

thread_local! {
    static WRITE_BEHIND: std::cell::RefCell<Option<Rc<WriteBehind>>> = const { std::cell::RefCell::new(None) };
}

/// Puts a connection's write off to the end of the current round: false where no flusher runs on
/// this thread (the write goes out at once).
fn defer_write(waker: &Waker) -> bool {
    WRITE_BEHIND.with(|cell| match cell.borrow().as_ref() {
        Some(behind) => {
            behind.waiting.borrow_mut().push(waker.clone());
            if let Some(flusher) = behind.flusher.take() {
                flusher.wake();
            }
            true
        }
        None => false,
    })
}

/// Starts this core's flusher in the task queue of the caller (the core's only one): connections'
/// writes are coalesced per round from then on.
///
/// The flusher shares the connections' queue on purpose. Woken by the first write put off, it runs
/// after the tasks ready at that moment (glommio runs a queue's tasks in the order they were woken),
/// so a write waits for at most one pass over them. In a queue of its own it would run only once the
/// connections' queue had no task ready or was preempted (100 ms by default): a task that keeps
/// yielding (hyper's HTTP/1.1 dispatcher does after 16 pipelined requests) would hold every other
/// connection's response back that long.
pub fn coalesce_writes() {
    let behind = Rc::new(WriteBehind {
        waiting: std::cell::RefCell::new(Vec::new()),
        flusher: Cell::new(None),
    });
    let flusher = behind.clone();
    glommio::spawn_local(async move {
        loop {
            std::future::poll_fn(|cx| {
                if flusher.waiting.borrow().is_empty() {
                    flusher.flusher.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let waiting = std::mem::take(&mut *flusher.waiting.borrow_mut());
            for waker in waiting {
                waker.wake();
            }
        }
    })
    .detach();
    WRITE_BEHIND.with(|cell| *cell.borrow_mut() = Some(behind));
}

thread_local! {
    /// Where reads land before they are copied into hyper's (uninitialised) buffer: zeroed once per
    /// thread, so a read costs a copy of the bytes read instead of a memset of the whole buffer.
    /// glommio polls on one thread and never keeps the slice it is given past a poll.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_READ_BYTES].into_boxed_slice());
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let len = buf.remaining().min(scratch.len());
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut scratch[..len]);
            if let Poll::Ready(Ok(n)) = polled {
                buf.put_slice(&scratch[..n]);
            }
            polled
        });
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Where the core coalesces writes ([`coalesce_writes`]), the first write of each flush waits until
/// the tasks ready before it have run: a response those tasks finish meanwhile goes out in the same
/// `send` (h2 adds what they queued to its buffer when the connection is polled again). That costs one
/// more poll of the connection per flush and saves a system call, and the peer's wake-up, for every
/// response that joins it.
impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.deferred && defer_write(cx.waker()) {
            self.deferred = true;
            return Poll::Pending;
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                self.activity.last_write.set(Instant::now());
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.deferred = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Records each write into `log` as it reaches the socket.
    struct Recorder(Rc<std::cell::RefCell<Vec<&'static str>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.borrow_mut().push("write");
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What reaches the log when a connection writes while another task is ready behind it.
    fn order(coalesce: bool) -> Vec<&'static str> {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                if coalesce {
                    coalesce_writes();
                }
                let log = Rc::new(std::cell::RefCell::new(Vec::new()));
                let mut io = Io::new(Recorder(log.clone()), Activity::new());
                let writer = glommio::spawn_local(async move {
                    use hyper::rt::Write;
                    std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"response"))
                        .await?;
                    std::future::poll_fn(|cx| Pin::new(&mut io).poll_flush(cx)).await
                });
                let other_log = log.clone();
                let other =
                    glommio::spawn_local(async move { other_log.borrow_mut().push("other task") });
                writer.await.expect("written");
                other.await;
                let order = log.borrow().clone();
                order
            })
            .expect("executor")
            .join()
            .expect("joined")
    }

    #[test]
    fn a_write_waits_for_the_tasks_ready_before_it_where_writes_are_coalesced() {
        assert_eq!(order(true), ["other task", "write"]);
        assert_eq!(order(false), ["write", "other task"]);
    }

    /// Notes when the first write reaches the socket.
    struct Stamp(Rc<Cell<Option<Instant>>>);

    impl AsyncWrite for Stamp {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.0.get().is_none() {
                self.0.set(Some(Instant::now()));
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// How long a write waits on a core where another task keeps yielding (hyper's HTTP/1.1
    /// dispatcher yields so after 16 rounds of pipelined requests) for `busy`.
    fn write_delay(busy: Duration) -> Duration {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                coalesce_writes();
                let stop = Rc::new(Cell::new(false));
                let spinning = stop.clone();
                let spinner = glommio::spawn_local(async move {
                    let started = Instant::now();
                    while !spinning.get() && started.elapsed() < busy {
                        futures_lite::future::yield_now().await;
                    }
                });
                futures_lite::future::yield_now().await;
                let written = Rc::new(Cell::new(None));
                let mut io = Io::new(Stamp(written.clone()), Activity::new());
                let asked = Instant::now();
                {
                    use hyper::rt::Write;
                    std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"response"))
                        .await
                        .expect("written");
                }
                stop.set(true);
                spinner.await;
                written.get().expect("write reached the socket") - asked
            })
            .expect("executor")
            .join()
            .expect("joined")
    }

    #[test]
    fn a_write_is_not_held_back_while_another_task_keeps_yielding() {
        let delay = write_delay(Duration::from_secs(2));
        assert!(
            delay < Duration::from_millis(50),
            "write held back {delay:?}"
        );
    }
}
