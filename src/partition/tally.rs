//! What a transition adds to the core's `/metrics` figures ([`crate::metrics`]), read off the command
//! and the effects the state machine decided, so the state machine itself stays free of side effects.

use super::processor::Processor;
use super::state_machine::{Action, Command, Effect, Effects};

/// Taken before a command is applied: what only the state before it knows.
pub(super) struct Tally {
    /// The service of the started invocation this command may end (Finish and Cancel end them).
    ending: Option<String>,
    /// The command appends an entry an endpoint sent.
    appending: bool,
}

impl Tally {
    pub(super) fn before(processor: &Processor, command: &Command) -> Tally {
        let ending = match command {
            Command::Finish { id, .. } | Command::Cancel { id, .. } => processor.service_name(*id),
            _ => None,
        };
        Tally {
            ending,
            appending: matches!(command, Command::Append { .. }),
        }
    }

    /// Counts what `effects` do: invocations started (the input entry is written with the status
    /// row), the end of `ending`, an appended entry.
    pub(super) fn after(self, effects: &Effects) {
        for write in &effects.writes {
            match write {
                Effect::PutEntry(_, id, 0, _) => {
                    let service = effects.writes.iter().find_map(|w| match w {
                        Effect::PutStatus(_, status_id, status) if status_id == id => {
                            Some(status.service.as_str())
                        }
                        _ => None,
                    });
                    if let Some(service) = service {
                        crate::metrics::invocation_started(service);
                    }
                }
                Effect::PutEntry(..) if self.appending => crate::metrics::journal_entry_appended(),
                _ => {}
            }
        }
        let Some(service) = &self.ending else { return };
        for action in &effects.actions {
            if let Action::Ended { outcome, .. } = action {
                crate::metrics::invocation_ended(service, outcome.is_ok());
            }
        }
    }
}
