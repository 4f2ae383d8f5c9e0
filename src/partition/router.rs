//! Delivers commands to the core that owns a partition: a bounded queue per core (senders wait when
//! it is full), drained by a task on that core.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::command::Command;
use super::PartitionId;

/// Why a command could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("core {0} is not accepting work (shutting down)")]
pub struct Closed(pub usize);

/// Routes commands to owner cores. Cheap to clone, `Send`.
#[derive(Clone)]
pub struct Router {
    cores: Arc<Vec<mpsc::Sender<Command>>>,
    partitions: u32,
}

/// The receiving end of one core's queue.
pub struct Inbox(mpsc::Receiver<Command>);

impl Router {
    /// A router over `cores` queues of `capacity` each; returns the receiving ends, one per core.
    pub fn new(cores: usize, partitions: u32, capacity: usize) -> (Router, Vec<Inbox>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| mpsc::channel(capacity)).unzip();
        (
            Router {
                cores: Arc::new(senders),
                partitions,
            },
            receivers.into_iter().map(Inbox).collect(),
        )
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The core owning `partition`.
    pub fn owner(&self, partition: PartitionId) -> usize {
        partition as usize % self.cores.len()
    }

    /// Delivers `command` to the owner of `partition` (waits while its queue is full).
    pub async fn send(&self, partition: PartitionId, command: Command) -> Result<(), Closed> {
        let core = self.owner(partition);
        let mut sender = self.cores[core].clone();
        sender.send(command).await.map_err(|_| Closed(core))
    }
}

impl Inbox {
    /// The next command; `None` once all senders are gone.
    pub async fn next(&mut self) -> Option<Command> {
        self.0.next().await
    }
}
