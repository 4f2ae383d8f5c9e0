//! The in-memory side of one core's per-key inboxes: invocations waiting while their key is busy.
//!
//! Every queued invocation is a row of the inbox table first; memory holds its place in line and what
//! is needed to answer or cancel it, but its argument only while the core's argument budget
//! (`worker.inbox.memory_bytes_per_core`) allows: a backlog of large one-way calls behind a parked key
//! then costs storage, not memory, also after a restart. Admission is bounded per key and per core
//! (`worker.inbox.max_entries_per_key`, `max_entries_per_core`). Pure data: no IO.

use std::collections::{HashMap, VecDeque};

use super::invocation::{Failure, NewInvocation};
use super::{InvocationId, ServiceId};
use crate::config;
use crate::grpc::Code;

/// An invocation waiting in an inbox (mirrored by a row of the inbox table).
#[derive(Debug)]
pub struct Queued {
    /// Its inbox row's sequence number (FIFO order within the core).
    pub sequence: u64,
    /// The invocation; its `argument` is empty when `argument_in_memory` is false.
    pub invocation: NewInvocation,
    /// False: the argument is only in the inbox row and must be read back before the invocation starts.
    pub argument_in_memory: bool,
}

/// The per-key queues of one core, with their bounds.
#[derive(Debug)]
pub struct Inboxes {
    queues: HashMap<ServiceId, VecDeque<Queued>>,
    /// Every invocation that is queued or popped but not yet started, and its key: de-duplicates
    /// repeated deliveries and finds an invocation to cancel without a scan.
    index: HashMap<InvocationId, ServiceId>,
    /// Bytes of arguments held in memory.
    argument_bytes: usize,
    limits: config::Inbox,
}

impl Default for Inboxes {
    fn default() -> Self {
        Inboxes::new(config::Inbox::default())
    }
}

impl Inboxes {
    /// Empty inboxes with these bounds.
    pub fn new(limits: config::Inbox) -> Inboxes {
        Inboxes {
            queues: HashMap::new(),
            index: HashMap::new(),
            argument_bytes: 0,
            limits,
        }
    }

    /// Whether `id` is queued (or popped and still starting).
    pub fn contains(&self, id: &InvocationId) -> bool {
        self.index.contains_key(id)
    }

    /// Invocations queued or starting on this core.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is queued or starting.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Invocations waiting for `service`'s key.
    pub fn depth(&self, service: &ServiceId) -> usize {
        self.queues.get(service).map_or(0, VecDeque::len)
    }

    /// Bytes of queued arguments held in memory.
    pub fn argument_bytes(&self) -> usize {
        self.argument_bytes
    }

    /// Whether one more invocation may wait for `service`'s key; the failure its caller gets if not.
    pub fn admit(&self, service: &ServiceId) -> Result<(), Failure> {
        let depth = self.depth(service);
        if depth >= self.limits.max_entries_per_key {
            return Err(Failure::new(
                Code::ResourceExhausted,
                format!(
                    "{depth} invocations already wait for this key of {} (worker.inbox.max_entries_per_key)",
                    service.service
                ),
            ));
        }
        if self.len() >= self.limits.max_entries_per_core {
            return Err(Failure::new(
                Code::ResourceExhausted,
                format!(
                    "{} invocations already wait in this core's inboxes (worker.inbox.max_entries_per_core)",
                    self.len()
                ),
            ));
        }
        Ok(())
    }

    /// Appends an invocation (already admitted, or recovered from storage) to its key's queue. Its
    /// argument stays in memory only within the budget.
    pub fn push(&mut self, sequence: u64, mut invocation: NewInvocation) {
        let size = invocation.argument.len();
        let argument_in_memory = self.argument_bytes + size <= self.limits.memory_bytes_per_core;
        if argument_in_memory {
            self.argument_bytes += size;
        } else {
            invocation.argument = Default::default();
        }
        self.index.insert(invocation.id, invocation.service.clone());
        self.queues
            .entry(invocation.service.clone())
            .or_default()
            .push_back(Queued {
                sequence,
                invocation,
                argument_in_memory,
            });
    }

    /// Takes the first invocation waiting for `service`'s key. It stays known to [`contains`] until
    /// [`started`] says it runs.
    ///
    /// [`contains`]: Self::contains
    /// [`started`]: Self::started
    pub fn pop(&mut self, service: &ServiceId) -> Option<Queued> {
        let queue = self.queues.get_mut(service)?;
        let queued = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(service);
        }
        let queued = queued?;
        self.release(&queued);
        Some(queued)
    }

    /// A popped invocation now runs (or was dropped): forget it.
    pub fn started(&mut self, id: &InvocationId) {
        self.index.remove(id);
    }

    /// Removes a queued invocation (cancellation). `None` if it is not waiting in a queue (unknown, or
    /// popped and still starting).
    pub fn remove(&mut self, id: &InvocationId) -> Option<Queued> {
        let service = self.index.get(id)?.clone();
        let queue = self.queues.get_mut(&service)?;
        let position = queue.iter().position(|q| q.invocation.id == *id)?;
        let queued = queue.remove(position)?;
        if queue.is_empty() {
            self.queues.remove(&service);
        }
        self.release(&queued);
        self.index.remove(id);
        Some(queued)
    }

    /// The keys with invocations waiting.
    pub fn services(&self) -> impl Iterator<Item = &ServiceId> {
        self.queues.keys()
    }

    fn release(&mut self, queued: &Queued) {
        if queued.argument_in_memory {
            self.argument_bytes -= queued.invocation.argument.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(per_key: usize, per_core: usize, bytes: usize) -> config::Inbox {
        config::Inbox {
            max_entries_per_key: per_key,
            max_entries_per_core: per_core,
            memory_bytes_per_core: bytes,
        }
    }

    fn service(key: &str) -> ServiceId {
        ServiceId {
            service: "counter".into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    fn invocation(key: &str, argument_bytes: usize) -> NewInvocation {
        let service = service(key);
        NewInvocation {
            id: InvocationId::new(service.partition_key()),
            service,
            method: "add".into(),
            argument: Bytes::from(vec![7u8; argument_bytes]),
            keyed: true,
            response_sink: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn queues_are_fifo_per_key_and_indexed_until_started() {
        let mut inboxes = Inboxes::new(limits(10, 10, 1 << 20));
        let (a1, a2, b1) = (invocation("a", 1), invocation("a", 1), invocation("b", 1));
        let ids = [a1.id, a2.id, b1.id];
        inboxes.push(0, a1);
        inboxes.push(1, b1);
        inboxes.push(2, a2);
        assert_eq!(inboxes.depth(&service("a")), 2);
        let first = inboxes.pop(&service("a")).unwrap();
        assert_eq!((first.sequence, first.invocation.id), (0, ids[0]));
        assert!(inboxes.contains(&ids[0]), "popped but not started");
        inboxes.started(&ids[0]);
        assert!(!inboxes.contains(&ids[0]));
        assert_eq!(inboxes.pop(&service("a")).unwrap().invocation.id, ids[1]);
        assert!(inboxes.pop(&service("a")).is_none());
        assert_eq!(inboxes.remove(&ids[2]).unwrap().sequence, 1);
        assert!(inboxes.remove(&ids[2]).is_none());
        assert_eq!(inboxes.services().count(), 0);
    }

    #[test]
    fn admission_is_bounded_per_key_and_per_core() {
        let mut inboxes = Inboxes::new(limits(2, 3, 1 << 20));
        inboxes.push(0, invocation("a", 1));
        inboxes.push(1, invocation("a", 1));
        let refused = inboxes.admit(&service("a")).unwrap_err();
        assert_eq!(refused.code, Code::ResourceExhausted as u32);
        assert!(
            refused.message.contains("max_entries_per_key"),
            "{refused:?}"
        );
        assert!(inboxes.admit(&service("b")).is_ok());
        inboxes.push(2, invocation("b", 1));
        let refused = inboxes.admit(&service("c")).unwrap_err();
        assert!(
            refused.message.contains("max_entries_per_core"),
            "{refused:?}"
        );
    }

    #[test]
    fn arguments_past_the_memory_budget_stay_in_storage() {
        let mut inboxes = Inboxes::new(limits(100, 100, 250));
        for sequence in 0..5 {
            inboxes.push(sequence, invocation("a", 100));
        }
        assert_eq!(inboxes.argument_bytes(), 200);
        let kept: Vec<bool> = (0..5)
            .map(|_| {
                let q = inboxes.pop(&service("a")).unwrap();
                assert_eq!(
                    q.invocation.argument.len(),
                    if q.argument_in_memory { 100 } else { 0 }
                );
                q.argument_in_memory
            })
            .collect();
        assert_eq!(kept, [true, true, false, false, false]);
        assert_eq!(inboxes.argument_bytes(), 0, "popping releases the budget");
    }
}
