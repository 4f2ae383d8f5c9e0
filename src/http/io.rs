//! Adapts glommio's `futures` IO to hyper's IO traits, recording activity for the idle timeout.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

/// Most bytes one read asks for.
const MAX_READ_BYTES: usize = 64 * 1024;

/// What the idle watchdog of a connection looks at.
#[derive(Debug)]
pub struct Activity {
    /// When bytes last arrived.
    last_read: Cell<Instant>,
    /// Requests being handled right now: a connection waiting on a response is not idle.
    in_flight: Cell<usize>,
}

impl Activity {
    /// A fresh connection counts as active now.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            last_read: Cell::new(Instant::now()),
            in_flight: Cell::new(0),
        })
    }

    /// Marks a request in flight until the guard drops.
    pub fn enter(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }

    /// When the connection counts as idle from, or `None` while a request is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.get() == 0).then(|| self.last_read.get())
    }
}

/// A request in flight on a connection.
pub struct InFlight(Rc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        // A finished request restarts the idle clock.
        self.0.last_read.set(Instant::now());
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
                    self.activity.last_read.set(Instant::now());
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
