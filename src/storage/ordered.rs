//! A core's ordered path to the storage thread.
//!
//! The partition processor decides transitions synchronously and submits their batches at once; this
//! pump hands them to the storage thread in submission order (awaiting queue room one request at a
//! time), so storage applies a core's writes and reads in program order while concurrent requests still
//! share group commits. Callers await durability separately.
//!
//! The local queue holds only requests the processor already decided on; its length is bounded by the
//! work in flight on the core (ingress requests and invocation attempts, both limited by config).

use std::future::Future;
use std::pin::Pin;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};

use super::{Error, Row, Storage, Table, WriteBatch};

type Dispatch = Box<dyn FnOnce(&Storage, super::Permit) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Submits storage requests in order. Cheap to clone; lives on one core.
#[derive(Clone)]
pub struct Ordered {
    queue: mpsc::UnboundedSender<Dispatch>,
}

impl Ordered {
    /// Starts the pump on the current core.
    pub fn new(storage: Storage) -> Ordered {
        let (queue, mut rx) = mpsc::unbounded::<Dispatch>();
        glommio::spawn_local(async move {
            while let Some(dispatch) = rx.next().await {
                let permit = storage.permit().await;
                // The request is enqueued synchronously inside `dispatch`; its reply is awaited by
                // a task of its own so the pump moves on at once.
                glommio::spawn_local(dispatch(&storage, permit)).detach();
            }
        })
        .detach();
        Ordered { queue }
    }

    fn submit<T: 'static>(
        &self,
        make: impl FnOnce(&Storage, super::Permit) -> Pin<Box<dyn Future<Output = Result<T, Error>>>>
            + 'static,
    ) -> impl Future<Output = Result<T, Error>> {
        let (tx, rx) = oneshot::channel();
        let dispatch: Dispatch = Box::new(move |storage, permit| {
            let reply = make(storage, permit);
            async move {
                let _ = tx.send(reply.await);
            }
            .boxed_local()
        });
        let queued = self.queue.unbounded_send(dispatch);
        async move {
            queued.map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// Writes `batch` after everything submitted before it; completes when durable.
    pub fn write(&self, batch: WriteBatch) -> impl Future<Output = Result<(), Error>> {
        self.submit(move |storage, permit| storage.send_write(permit, batch).boxed_local())
    }

    /// Reads one row, after everything submitted before it.
    pub fn get(
        &self,
        table: Table,
        key: Vec<u8>,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> {
        self.submit(move |storage, permit| storage.send_get(permit, table, key).boxed_local())
    }

    /// Reads rows with `start <= key < end`, after everything submitted before it.
    pub fn scan(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> {
        self.submit(move |storage, permit| {
            storage
                .send_scan(permit, table, start, end, limit)
                .boxed_local()
        })
    }

    /// Reads the rows starting with `prefix`, after everything submitted before it.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: Vec<u8>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> {
        let end = super::prefix_end(&prefix);
        self.scan(table, prefix, end, limit)
    }
}
