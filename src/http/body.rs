//! Request bodies that cannot stall forever, and errors that say what went wrong with a body.
//!
//! A client that declares 1,000 bytes and sends 10 holds a stream, a handler and its buffers for as long
//! as it likes; neither hyper nor h2 bounds the time between two body frames. [`StallTimeout`] wraps a
//! body and fails it once no frame arrived for the configured time (`runtime.http_body_stall_timeout`),
//! using one glommio timer per body, re-armed only when the body is pending. The server puts the limit
//! into each request's extensions ([`StallLimit`]), so handlers guard a body with [`guarded`] and need
//! no configuration of their own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use glommio::timer::Timer;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::BoxError;

/// Used when a request carries no [`StallLimit`] (a handler called outside [`super::server::serve`]).
const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The stall limit of a request's body, set by the server in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct StallLimit(pub Duration);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No data arrived for the stall limit.
    #[error(
        "the request body delivered no data for {0:?} (runtime.http_body_stall_timeout); giving up"
    )]
    Stalled(Duration),
    /// The bytes on the wire are not a valid body (a bad chunk size line, say).
    #[error("malformed request body: {0}")]
    Malformed(BoxError),
    /// The client went away or reset the stream before the body ended.
    #[error("the request body ended early: {0}")]
    Aborted(BoxError),
}

impl BodyError {
    /// A stalled or aborted body may go through on another try; a malformed one never does.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BodyError::Malformed(_))
    }

    /// Classifies an error of the wrapped body: hyper reports bad framing (chunk sizes, extensions,
    /// trailers) as an IO error of kind `InvalidData`/`InvalidInput`; everything else is the peer going
    /// away or resetting the stream.
    fn classify(error: BoxError) -> BodyError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                ) {
                    return BodyError::Malformed(error);
                }
            }
            source = e.source();
        }
        BodyError::Aborted(error)
    }
}

/// A body that fails with [`BodyError::Stalled`] when no frame arrives for its limit.
pub struct StallTimeout<B> {
    inner: B,
    limit: Duration,
    /// Armed while the inner body is pending; `None` before the first wait.
    timer: Option<Timer>,
    /// Whether the timer counts down from the latest frame (else it must be re-armed).
    armed: bool,
}

impl<B> StallTimeout<B> {
    /// Wraps `inner`; must be polled on a glommio executor.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }
}

/// The body of `request`, guarded by the stall limit the server set on it.
pub fn guarded(request: http::Request<Incoming>) -> StallTimeout<Incoming> {
    let limit = request
        .extensions()
        .get::<StallLimit>()
        .map_or(DEFAULT_STALL_LIMIT, |l| l.0);
    StallTimeout::new(request.into_body(), limit)
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(|e| BodyError::classify(e.into()))))
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this.timer.get_or_insert_with(|| Timer::new(limit));
                if !this.armed {
                    timer.reset(limit);
                    this.armed = true;
                }
                match Pin::new(timer).poll(cx) {
                    Poll::Ready(_) => Poll::Ready(Some(Err(BodyError::Stalled(limit)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Instant;

    /// A body that yields its frames, then stays pending forever.
    struct Trickle(Vec<Bytes>);

    impl Body for Trickle {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn a_stalled_body_fails_after_its_limit() {
        let (elapsed, error) = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let started = Instant::now();
                let body = StallTimeout::new(
                    Trickle(vec![Bytes::from_static(b"x")]),
                    Duration::from_millis(100),
                );
                let error = body.collect().await.err().unwrap();
                (started.elapsed(), error)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(error, BodyError::Stalled(_)), "{error}");
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[test]
    fn bad_framing_is_malformed_and_the_rest_aborted() {
        let bad: BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "invalid chunk size line",
        ));
        assert!(matches!(BodyError::classify(bad), BodyError::Malformed(_)));
        let gone: BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "incomplete body",
        ));
        let gone = BodyError::classify(gone);
        assert!(matches!(gone, BodyError::Aborted(_)));
        assert!(gone.is_transient());
    }
}
