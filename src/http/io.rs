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

/// What the watchdog of a connection looks at: requests in flight, when the connection went idle, and
/// whether bytes of a next request have arrived since.
pub struct Activity {
    /// When the connection last had no request in flight (opened, or its last request answered).
    idle_since: Cell<Instant>,
    /// The first byte received since the connection went idle: a request head (or HTTP/2 frames) is
    /// on its way and must complete within the header read timeout.
    head_started: Cell<Option<Instant>>,
    /// When bytes last arrived.
    last_read: Cell<Instant>,
    /// Requests being handled right now: a connection waiting on a response is not idle.
    in_flight: Cell<usize>,
    /// The watchdog waiting for a change of state.
    waiter: Cell<Option<Waker>>,
}

/// Where a connection stands, for its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// At least one request is being handled.
    Busy,
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
            head_started: Cell::new(None),
            in_flight: Cell::new(0),
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
        match (self.in_flight.get(), self.head_started.get()) {
            (0, Some(since)) => State::ReadingHead { since },
            (0, None) => State::Idle {
                since: self.idle_since.get(),
            },
            _ => State::Busy,
        }
    }

    /// When bytes last arrived (a quiet connection is idle even in the middle of a request head).
    pub fn last_read(&self) -> Instant {
        self.last_read.get()
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
        if self.in_flight.get() == 0 && self.head_started.get().is_none() {
            self.head_started.set(Some(Instant::now()));
            self.wake();
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Rc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.in_flight.set(activity.in_flight.get() - 1);
        if activity.in_flight.get() == 0 {
            // A finished request restarts the idle clock.
            activity.idle_since.set(Instant::now());
            activity.head_started.set(None);
            activity.wake();
        }
    }
}

/// A response body that keeps its request in flight until it is sent (or dropped): a connection
/// streaming a long response is busy, not idle, whatever the client sends meanwhile (HTTP/2 window
/// updates would otherwise look like the start of a next request head).
pub struct InFlightBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> InFlightBody<B> {
    /// Holds `in_flight` as long as `inner` lives.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
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
}

impl<T> Io<T> {
    /// Wraps a stream.
    pub fn new(inner: T, activity: Rc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // SAFETY: the slice is zeroed before it is handed out as initialised bytes, and `advance` is only
        // called with the count the reader reports to have written.
        let unfilled = unsafe { buf.as_mut() };
        // Zeroing is a memset per read; cap it so a large buffer does not cost more than the read.
        let len = unfilled.len().min(MAX_READ_BYTES);
        let unfilled = &mut unfilled[..len];
        for byte in unfilled.iter_mut() {
            byte.write(0);
        }
        let slice = unsafe { &mut *(unfilled as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut self.inner).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.on_read();
                }
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
