//! Process-wide shutdown signal: triggered once (by SIGTERM/SIGINT or a failing core), awaited by every
//! core's accept loops and connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

/// A future that completes once shutdown has been triggered. Cheap to clone; `Send`, so every core holds
/// its own clone.
pub type Signal = Shared<oneshot::Receiver<()>>;

/// Triggers and observes shutdown.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    trigger: Mutex<Option<oneshot::Sender<()>>>,
    signal: Signal,
    triggered: AtomicBool,
}

impl Shutdown {
    /// A shutdown that has not been triggered.
    pub fn new() -> Self {
        let (tx, rx) = oneshot::channel();
        Self {
            inner: Arc::new(Inner {
                trigger: Mutex::new(Some(tx)),
                signal: rx.shared(),
                triggered: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the shutdown; later calls do nothing.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let sender = self
            .inner
            .trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// True once [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Completes when shutdown is triggered.
    pub fn signal(&self) -> Signal {
        self.inner.signal.clone()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}
