//! A batch handler that is not pure: it exports `batch` and imports `runtime` (it logs), which
//! the contract's `batch-handler` world does not allow. The host refuses it at load.

use handler_sdk::pure::{Events, PureGuest};
use handler_sdk::{HandlerError, KafkaRecord, Level, log};

struct Impure;

impl PureGuest for Impure {
    fn handle(record: &KafkaRecord, _events: &mut Events) -> Result<(), HandlerError> {
        log(Level::Info, &format!("offset {}", record.offset));
        Ok(())
    }
}

handler_sdk::export_pure!(Impure);
