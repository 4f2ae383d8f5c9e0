//! Work sent to the core that owns a partition (from ingress, meta, and other cores' outboxes).

use futures::channel::oneshot;

use super::invocation::{Ack, NewInvocation, Outcome};
use super::rows::OutboxMessage;
use super::{InvocationId, PartitionId};

/// A request to a partition's core. The channels stay in the processor's shell; the state machine
/// sees plain ids.
pub enum Command {
    /// Start (or enqueue) an invocation. `reply` gets its outcome once the output is durable; `ack`
    /// fires once the invocation itself is durable (enqueued or started).
    Invoke {
        invocation: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
        ack: Option<Ack>,
    },
    /// A message from another partition's outbox; `ack` once applied durably (or seen before, or
    /// refused for good: an invocation past an inbox bound).
    Deliver {
        producer: PartitionId,
        sequence: u64,
        message: OutboxMessage,
        ack: Ack,
    },
    /// Fail an invocation with ABORTED and release its key; `reply` says whether it was found, once
    /// that is durable (the end it wrote, or for "not found" every batch decided before).
    Cancel {
        id: InvocationId,
        reply: oneshot::Sender<bool>,
    },
    /// Write `id`'s held rows, if any (see [`super::transient`]), and answer once every write
    /// decided so far, its start included, is durable: before a caller is told it carries on.
    Persist {
        id: InvocationId,
        reply: oneshot::Sender<()>,
    },
}
