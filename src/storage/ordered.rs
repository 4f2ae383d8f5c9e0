//! A core's ordered path to the storage thread.
//!
//! The partition processor decides transitions synchronously and submits their batches at once; this
//! pump hands them to the storage thread in submission order (awaiting queue room one request at a
//! time), so storage applies a core's writes and reads in program order while concurrent requests still
//! share group commits. Callers await durability separately. Writes queued back to back (the core
//! decided several transitions in one turn: an endpoint's entries that arrived together, an end and
//! the start of the key's next invocation) travel as one request: one batch, one slot in the group
//! commit, durable together.
//!
//! The local queue holds only requests the processor already decided on; its length is bounded by the
//! work in flight on the core (ingress requests and invocation attempts, both limited by config).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::FutureExt;

use crate::local_queue;

use super::{Error, Row, Storage, Table, WriteBatch};

type Dispatch = Box<dyn FnOnce(&Storage, super::Permit) -> Pin<Box<dyn Future<Output = ()>>>>;

/// What the pump hands on: writes apart, so that consecutive ones can share a request.
enum Queued {
    Write(WriteBatch, oneshot::Sender<Result<(), Error>>),
    Other(Dispatch),
}

/// Submits storage requests in order. Cheap to clone; lives on one core.
#[derive(Clone)]
pub struct Ordered {
    queue: local_queue::Sender<Queued>,
    /// Writes submitted and not yet answered (durable or failed): while none is, a barrier (an
    /// empty write) has nothing to wait for and is answered at once, without a trip to storage.
    unanswered: Rc<Cell<u64>>,
}

impl Ordered {
    /// Starts the pump on the current core; at most `max_merged` writes share one request
    /// (`worker.storage_rocksdb.max_batch_requests`).
    pub fn new(storage: Storage, max_merged: usize) -> Ordered {
        let (queue, rx) = local_queue::unbounded::<Queued>();
        let unanswered = Rc::new(Cell::new(0));
        glommio::spawn_local(pump(storage, rx, max_merged.max(1), unanswered.clone())).detach();
        Ordered { queue, unanswered }
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
        let queued = self.queue.send(Queued::Other(dispatch));
        async move {
            queued.map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// Writes `batch` after everything submitted before it; completes when durable, and so (writes are
    /// durable in the order applied) when everything submitted before it is. An empty batch is such a
    /// barrier and nothing more; with no earlier write unanswered it completes at once.
    pub fn write(&self, batch: WriteBatch) -> impl Future<Output = Result<(), Error>> {
        let queued = if batch.is_empty() && self.unanswered.get() == 0 {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            self.unanswered.set(self.unanswered.get() + 1);
            let sent = self.queue.send(Queued::Write(batch, tx));
            if sent.is_err() {
                self.unanswered.set(self.unanswered.get() - 1);
            }
            Some((sent, rx))
        };
        async move {
            let Some((sent, rx)) = queued else {
                return Ok(());
            };
            sent.map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        }
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

    /// Reads one chunk of the rows with `start <= key < end` (at most `max_rows`, about `max_bytes`),
    /// after everything submitted before it.
    pub fn scan_chunk(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        max_rows: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<super::Chunk, Error>> {
        self.submit(move |storage, permit| {
            storage
                .send_scan_chunk(permit, table, start, end, max_rows, max_bytes)
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

/// Hands the queue to the storage thread in order. Writes queued back to back (decided in the same
/// turn of the core, or while the pump waited for room) go as one request: one batch in their order,
/// each waiter answered when it is durable. A read between two writes keeps them apart, so it sees
/// every write submitted before it (applied, not necessarily durable yet); it may also see writes
/// submitted after it, since the storage thread applies all the writes it drained at once before it
/// serves the reads drained with them.
async fn pump(
    storage: Storage,
    mut rx: local_queue::Receiver<Queued>,
    max_merged: usize,
    unanswered: Rc<Cell<u64>>,
) {
    let mut next = rx.recv().await;
    while let Some(queued) = next.take() {
        let permit = storage.permit().await;
        match queued {
            Queued::Other(dispatch) => {
                // The request is enqueued synchronously inside `dispatch`; its reply is awaited by
                // a task of its own so the pump moves on at once.
                glommio::spawn_local(dispatch(&storage, permit)).detach();
            }
            Queued::Write(mut batch, waiter) => {
                let mut waiters = vec![waiter];
                while waiters.len() < max_merged {
                    match rx.try_recv() {
                        Some(Queued::Write(more, waiter)) => {
                            batch.extend(more);
                            waiters.push(waiter);
                        }
                        Some(other) => {
                            next = Some(other);
                            break;
                        }
                        None => break, // nothing queued now (or closed: the next wait ends)
                    }
                }
                let durable = storage.send_write(permit, batch);
                let unanswered = unanswered.clone();
                glommio::spawn_local(async move {
                    let result = durable.await;
                    unanswered.set(unanswered.get() - waiters.len() as u64);
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                })
                .detach();
            }
        }
        if next.is_none() {
            next = rx.recv().await;
        }
    }
}
