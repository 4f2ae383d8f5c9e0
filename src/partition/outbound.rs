//! The durable outbox messages of one core waiting to be shipped, and which of them may go now.
//!
//! A target applies the messages of one producing partition in sequence order and remembers the last
//! sequence it applied (de-duplication): a message applied out of order would make an earlier one look
//! like a replay and drop it. So per (producer, target) pair at most one message is in flight, in
//! sequence order; different pairs go in parallel, up to a window (`worker.outbox.max_in_flight`), so
//! one slow target or a long backlog no longer serializes every cross-partition message of the core.
//! Pure data: no IO.

use std::collections::{HashMap, HashSet, VecDeque};

use super::rows::OutboxMessage;
use super::PartitionId;

/// (producing partition, target partition): the unit of ordering.
pub type Pair = (PartitionId, PartitionId);

/// A message to ship: its producer's sequence number and the row.
#[derive(Debug, Clone)]
pub struct Message {
    pub producer: PartitionId,
    pub target: PartitionId,
    pub sequence: u64,
    pub row: OutboxMessage,
}

/// Queues per pair, the pairs ready to ship, and the pairs in flight.
#[derive(Debug, Default)]
pub struct Outbound {
    queues: HashMap<Pair, VecDeque<Message>>,
    /// Pairs with queued messages and none in flight, oldest first.
    ready: VecDeque<Pair>,
    in_flight: HashSet<Pair>,
    queued: usize,
}

impl Outbound {
    /// Adds a durable message (in sequence order per producer).
    pub fn push(&mut self, message: Message) {
        let pair = (message.producer, message.target);
        let queue = self.queues.entry(pair).or_default();
        if queue.is_empty() && !self.in_flight.contains(&pair) {
            self.ready.push_back(pair);
        }
        queue.push_back(message);
        self.queued += 1;
    }

    /// The next message that may go now, if fewer than `window` are in flight. Its pair is in flight
    /// until [`shipped`](Self::shipped).
    pub fn next(&mut self, window: usize) -> Option<Message> {
        if self.in_flight.len() >= window {
            return None;
        }
        let pair = self.ready.pop_front()?;
        let queue = self.queues.get_mut(&pair)?;
        let message = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&pair);
        }
        self.in_flight.insert(pair);
        self.queued -= 1;
        Some(message)
    }

    /// The in-flight message of `pair` was acknowledged: the pair's next message may go.
    pub fn shipped(&mut self, pair: Pair) {
        self.in_flight.remove(&pair);
        if self.queues.contains_key(&pair) {
            self.ready.push_back(pair);
        }
    }

    /// Messages waiting (not in flight).
    pub fn backlog(&self) -> usize {
        self.queued
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(producer: PartitionId, target: PartitionId, sequence: u64) -> Message {
        Message {
            producer,
            target,
            sequence,
            row: OutboxMessage::default(),
        }
    }

    fn drain(outbound: &mut Outbound, window: usize) -> Vec<(Pair, u64)> {
        std::iter::from_fn(|| outbound.next(window))
            .map(|m| ((m.producer, m.target), m.sequence))
            .collect()
    }

    #[test]
    fn one_message_per_pair_in_flight_in_sequence_order() {
        let mut outbound = Outbound::default();
        for sequence in 0..3 {
            outbound.push(message(1, 7, sequence));
        }
        outbound.push(message(1, 8, 3));
        assert_eq!(drain(&mut outbound, 10), [((1, 7), 0), ((1, 8), 3)]);
        assert_eq!((outbound.in_flight(), outbound.backlog()), (2, 2));
        outbound.shipped((1, 8));
        assert!(
            outbound.next(10).is_none(),
            "nothing else for (1, 8); (1, 7) is in flight"
        );
        outbound.shipped((1, 7));
        assert_eq!(drain(&mut outbound, 10), [((1, 7), 1)]);
        outbound.shipped((1, 7));
        assert_eq!(drain(&mut outbound, 10), [((1, 7), 2)]);
        outbound.shipped((1, 7));
        assert_eq!((outbound.in_flight(), outbound.backlog()), (0, 0));
        assert!(outbound.next(10).is_none());
    }

    #[test]
    fn the_window_bounds_messages_in_flight() {
        let mut outbound = Outbound::default();
        for target in 0..5 {
            outbound.push(message(0, target, u64::from(target)));
        }
        assert_eq!(drain(&mut outbound, 2).len(), 2);
        outbound.shipped((0, 0));
        assert_eq!(drain(&mut outbound, 2), [((0, 2), 2)]);
        assert_eq!(outbound.backlog(), 2);
    }

    #[test]
    fn a_pair_refilled_while_in_flight_waits_for_its_ack() {
        let mut outbound = Outbound::default();
        outbound.push(message(3, 4, 10));
        assert_eq!(drain(&mut outbound, 8), [((3, 4), 10)]);
        outbound.push(message(3, 4, 11));
        assert!(outbound.next(8).is_none());
        outbound.shipped((3, 4));
        assert_eq!(drain(&mut outbound, 8), [((3, 4), 11)]);
    }
}
