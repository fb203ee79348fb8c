//! A handler whose linear memory starts at 128 MiB (under the engine's ceiling, over the default 64 MiB cap): a huge allocation at start.

use handler_sdk::{HandlerError, KafkaRecord};

struct BigStart;

impl handler_sdk::Guest for BigStart {
    fn handle(_record: &KafkaRecord) -> Result<(), HandlerError> {
        Ok(())
    }
}

handler_sdk::export!(BigStart);
