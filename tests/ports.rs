//! The test harness's port reservations (tests/common/ports.rs): a reserved port is never handed out
//! twice while it is held, and a port someone has bound is skipped.

#[path = "common/ports.rs"]
mod ports;

use std::collections::HashSet;
use std::net::TcpListener;

#[test]
fn free_ports_in_one_process_are_distinct_and_outside_the_ephemeral_range() {
    let ports: Vec<u16> = (0..200).map(|_| ports::free_port()).collect();
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    assert!(ports.iter().all(|p| ports::RANGE.contains(p)), "{ports:?}");
    // Each one is still bindable: nothing else took it.
    for port in ports {
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn a_held_port_is_not_handed_out_again_until_released() {
    // Two ports nobody else uses (held by the global reservations), tried in a private directory.
    let (a, b) = (ports::free_port(), ports::free_port());
    assert_ne!(a, b);
    let dir = tempfile::tempdir().unwrap();
    let first = ports::reserve(dir.path(), [a, b]).expect("a is free");
    assert_eq!(first.port, a);
    let second = ports::reserve(dir.path(), [a, b]).expect("b is free");
    assert_eq!(second.port, b, "a is held: the reservation must skip it");
    assert!(
        ports::reserve(dir.path(), [a, b]).is_none(),
        "both are held"
    );
    drop(first);
    let again = ports::reserve(dir.path(), [a, b]).expect("a was released");
    assert_eq!(again.port, a);
}

#[test]
fn a_bound_port_is_skipped() {
    let (bound, free) = (ports::free_port(), ports::free_port());
    let _listener = TcpListener::bind(("127.0.0.1", bound)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reservation = ports::reserve(dir.path(), [bound, free]).expect("one is free");
    assert_eq!(reservation.port, free);
}
