//! Invoke (request-response) and BackgroundInvoke (one-way, maybe delayed): the call goes to the
//! callee's partition through the outbox, written with the entry.

use bytes::Bytes;
use prost::Message;

use super::{decode_error, AppendError, Context, Decision};
use crate::partition::invocation::{Failure, NewInvocation};
use crate::partition::rows::{outbox_message, Entry, ResponseSink, Timer};
use crate::partition::state_machine::codec::{outcome_result, result_bytes};
use crate::partition::state_machine::{fresh_id, Env, TimerKey};
use crate::partition::{unkeyed_key_where, PartitionId, ServiceId};
use crate::protocol::messages::{BackgroundInvokeEntryMessage, InvokeEntryMessage};
use crate::protocol::Frame;

/// A call: shipped to the callee, whose end completes this entry. A call to an unknown target
/// completes it at once with the failure.
pub fn invoke(
    context: &Context<'_, '_>,
    frame: &Frame,
    entry: &mut Entry,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    if entry.completed {
        return Ok(());
    }
    let invoke =
        InvokeEntryMessage::decode(frame.payload.clone()).map_err(decode_error(context.index))?;
    let sink = ResponseSink {
        caller: Bytes::copy_from_slice(context.id.as_bytes()),
        entry_index: context.index,
    };
    match callee(
        context.env,
        context.partition,
        &invoke.service_name,
        &invoke.method_name,
        invoke.parameter.into(),
        Some(sink),
    ) {
        Ok(callee) => decision
            .outbox
            .push(outbox_message::Message::Invoke(callee.to_request())),
        Err(failure) => {
            let result = result_bytes(&outcome_result(&Err(failure)));
            decision.complete_with(entry, context.index, &result);
        }
    }
    Ok(())
}

/// A one-way call: shipped now, or held in a durable timer until its invoke time. One to an unknown
/// target is dropped with a WARN (nobody waits for it).
pub fn background_invoke(
    context: &Context<'_, '_>,
    frame: &Frame,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    let invoke = BackgroundInvokeEntryMessage::decode(frame.payload.clone())
        .map_err(decode_error(context.index))?;
    let callee = match callee(
        context.env,
        context.partition,
        &invoke.service_name,
        &invoke.method_name,
        invoke.parameter.into(),
        None,
    ) {
        Ok(callee) => callee,
        Err(failure) => {
            log::warn!(
                invocation = context.id.to_hex();
                "one-way call dropped: {}", failure.message
            );
            return Ok(());
        }
    };
    if invoke.invoke_time > context.env.clock.now_ms() {
        let key = TimerKey {
            wake_ms: invoke.invoke_time,
            partition: context.partition,
            id: context.id,
            index: context.index,
        };
        let row = Timer {
            invoke: Some(callee.to_request()),
        };
        decision.timer = Some((key, row));
    } else {
        decision
            .outbox
            .push(outbox_message::Message::Invoke(callee.to_request()));
    }
    Ok(())
}

/// The invocation a call from `caller` (its partition) starts: its target must be registered; the
/// key comes from the parameter (an unkeyed target gets a fresh one, in a partition of the caller's
/// core: the call and its answer then stay on that core).
pub fn callee(
    env: &Env<'_>,
    caller: PartitionId,
    service: &str,
    method: &str,
    parameter: Bytes,
    response_sink: Option<ResponseSink>,
) -> Result<NewInvocation, Failure> {
    let resolved = env.resolver.resolve(service, method, &parameter)?;
    let keyed = resolved.key.is_some();
    let key = resolved.key.unwrap_or_else(|| {
        let unique = env.clock.fresh_uuid();
        let cores = env.limits.cores.max(1);
        let core = caller as usize % cores;
        unkeyed_key_where(service, unique, env.limits.partitions, |p| {
            p as usize % cores == core
        })
        .unwrap_or(unique)
        .to_vec()
    });
    let service_id = ServiceId {
        service: service.to_owned(),
        key: key.into(),
    };
    Ok(NewInvocation {
        id: fresh_id(env.clock, service_id.partition_key()),
        service: service_id,
        method: method.to_owned(),
        argument: parameter,
        keyed,
        response_sink,
        idempotency_key: None,
    })
}
